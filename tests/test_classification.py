import copy
import math
import os.path as osp

import pytest
import torch
from helpers import run_tool

from asmlp_mm.analysis import paper
from asmlp_mm.analysis import build_model_from_config, count_flops, count_params
from asmlp_mm.datasets import make_classification_folder
from asmlp_mm.fast import memory

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSIFIERS = [m for m in paper.load_models() if m.task == 'Image Classification']


@pytest.mark.parametrize('entry', CLASSIFIERS, ids=lambda m: m.name)
def test_params_and_flops_match_paper(entry):
    """28M/50M/88M parameters; 4.4G/8.5G/15.2G FLOPs at 224 and 44.6G for B at 384."""
    model = build_model_from_config(entry.config_path())
    assert count_params(model) == pytest.approx(entry.params, abs=0.5e6)
    # ours: 4.38G, 8.56G, 15.19G, 44.65G (GroupNorm counted; convolutions alone 8.51G for S)
    flops = count_flops(model, [torch.zeros(1, 3, *entry.flops_shape)])
    assert flops == pytest.approx(entry.flops, rel=0.01)


# Swin's main.py states its rates per 512 images (base, warm-up start, floor) and scales them
# linearly with the total batch; the released AS-MLP code does the same.
SWIN_RATES_PER_512 = {
    'asmlp-tiny_8xb128_in1k': (5e-4, 5e-7, 5e-6, 0.05, 20, 300),
    'asmlp-base_8xb128_in1k-384px': (2e-5, 2e-8, 2e-7, 1e-8, 5, 30),
}


@pytest.mark.parametrize('name', sorted(SWIN_RATES_PER_512))
def test_recipe_rates_are_swins_scaled_to_the_batch(name):
    from mmengine.config import Config
    base, warmup_start, floor, weight_decay, warmup_epochs, epochs = SWIN_RATES_PER_512[name]
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'asmlp', name + '.py'))
    batch = 8 * cfg.train_dataloader.batch_size
    assert batch == cfg.auto_scale_lr.base_batch_size == 1024
    scale = batch / 512
    optimizer = cfg.optim_wrapper.optimizer
    warmup, cosine = cfg.param_scheduler
    assert (optimizer.type, optimizer.weight_decay) == ('AdamW', weight_decay)
    assert optimizer.lr == pytest.approx(base * scale)
    assert warmup.type == 'LinearLR' and warmup.end == warmup_epochs
    assert optimizer.lr * warmup.start_factor == pytest.approx(warmup_start * scale)
    assert cosine.type == 'CosineAnnealingLR'
    # both stepped every iteration, as timm's scheduler in the released code (mmpretrain's
    # Swin schedule steps the cosine once an epoch)
    assert warmup.convert_to_iter_based and cosine.convert_to_iter_based
    # a ratio of the peak, so that --auto-scale-lr scales the floor too, as Swin's code does
    assert 'eta_min' not in cosine
    assert optimizer.lr * cosine.eta_min_ratio == pytest.approx(floor * scale)
    assert cfg.train_cfg.max_epochs == epochs
    # fine-tuning starts from the 224 model (it trained from random weights, silently)
    assert cfg.load_from == ('checkpoints/asmlp-base_8xb128_in1k.pth' if '384' in name
                             else None)


def timm_cosine_lr(t, total, warmup, base, warmup_start, floor):
    """The rate at iteration ``t`` of timm's CosineLRScheduler as the released AS-MLP code
    sets it up (t_initial = all iterations, warmup_t = warm-up iterations, t_in_epochs
    False, no warm-up prefix, one cycle)."""
    if t < warmup:
        return warmup_start + t * (base - warmup_start) / warmup
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize('name', sorted(SWIN_RATES_PER_512))
def test_learning_rate_follows_timms_cosine(name):
    """Iteration by iteration against timm's formula, with 50 iterations an epoch: the same
    after the warm-up; during it at most the cosine's drop by the warm-up's end below it
    (mmengine multiplies the overlapping schedules there), and at most one warm-up step
    above it (mmengine's LinearLR reaches the peak one iteration before the end)."""
    from mmengine.config import Config
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'asmlp', name + '.py'))
    epochs, per_epoch = cfg.train_cfg.max_epochs, 50
    base = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedulers = []
    for scheduler in copy.deepcopy(cfg.param_scheduler):  # as mmengine's runner builds them
        assert scheduler.pop('convert_to_iter_based')
        scheduler.setdefault('end', epochs)
        schedulers.append(PARAM_SCHEDULERS.get(scheduler.pop('type')).build_iter_from_epoch(
            optimizer, epoch_length=per_epoch, **scheduler))
    warmup, cosine = cfg.param_scheduler
    total, warmup_iters = epochs * per_epoch, warmup.end * per_epoch
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]['lr'])
        for scheduler in schedulers:
            scheduler.step()
    floor = base * cosine.eta_min_ratio
    expected = [timm_cosine_lr(t, total, warmup_iters, base, base * warmup.start_factor,
                               floor) for t in range(total)]
    drop = 1 - 0.5 * (1 + math.cos(math.pi * warmup.end / epochs))
    for t, (rate, timm) in enumerate(zip(rates, expected)):
        if t >= warmup_iters:
            assert rate == pytest.approx(timm, rel=1e-3), t
        else:
            assert timm * (1 - drop) * 0.999 <= rate <= timm * (1 + 1 / (warmup_iters - 1)), t
    assert rates[-1] == pytest.approx(floor, rel=0.01)


def test_tiny_train_and_test_through_tools(tmp_path):
    data = tmp_path / 'shapes_cls'
    make_classification_folder(str(data), num_train=8, num_val=4, size=32)
    work = tmp_path / 'work'
    config = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}', 'train_cfg.max_epochs=2',
            'train_cfg.val_interval=2']
    run_tool(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(work), *opts,
             cwd=tmp_path)
    ckpt = work / 'epoch_2.pth'
    assert ckpt.is_file()
    # resume on torch >= 2.6 (weights_only loading of mmengine's message hub)
    out = run_tool(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(work),
                   '--resume', *opts[:-2], 'train_cfg.max_epochs=3', cwd=tmp_path)
    assert 'resumed epoch: 2' in out.lower() or 'Load checkpoint from' in out
    if memory.ON and not memory.allocator_settings():
        assert 'glibc keeps the memory it frees' in out  # a CPU run: asmlp_mm.engine.cli
    assert (work / 'epoch_3.pth').is_file()
    out = run_tool(osp.join(ROOT, 'tools', 'test.py'), config, str(work / 'epoch_3.pth'),
                   '--work-dir', str(work), '--show-dir', 'drawn', '--out', 'preds.pkl',
                   *opts, cwd=tmp_path)
    assert 'accuracy/top1' in out
    # --out: mmengine's DumpResults beside the config's metric, one prediction per image
    import pickle
    with open(tmp_path / 'preds.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == len(list((data / 'val').rglob('*.png')))
    assert all('pred_label' in p for p in predictions)
    # --show-dir is relative to the work dir, as for detection and segmentation
    assert len(list((work / 'drawn').glob('*.png'))) == len(list((data / 'val').rglob('*.png')))
    assert not (tmp_path / 'drawn').exists()


def test_mmpretrains_browse_dataset_runs_our_configs(tmp_path):
    """mmpretrain's packaged tools/visualization/browse_dataset.py passes cfg.visualizer to
    the visualizer's constructor; inherited through 'mmpretrain::' it held a _scope_ key
    (TypeError). Its default mode fails with this matplotlib for any config, so 'original'."""
    import mmpretrain
    data = tmp_path / 'shapes_cls'
    make_classification_folder(str(data), num_train=2, num_val=1, size=32)
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'visualization',
                    'browse_dataset.py')
    config = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
    run_tool(tool, config, '-o', 'out', '-n', '2', '-m', 'original', '--cfg-options',
             f'train_dataloader.dataset.data_root={data}', cwd=tmp_path, threads=1)
    assert len(list((tmp_path / 'out').glob('*.png'))) == 2


def test_demo_learns_the_shapes(tmp_path):
    """The classification demo as `python tools/demo.py cls` runs it (its dataset of 200
    images per class, its 40 epochs) ends well above chance (33.3% on three classes); it
    once stayed at chance, remembering colours. About 70 s on one thread."""
    import json

    from asmlp_mm.datasets.demo_data import write_dataset
    data = write_dataset('cls', str(tmp_path / 'shapes_cls'))
    work = tmp_path / 'work'
    config = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
    opts = ['--cfg-options'] + [f'{loader}.dataset.data_root={data}' for loader in (
        'train_dataloader', 'val_dataloader', 'test_dataloader')] + ['train_cfg.val_interval=40']
    run_tool(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(work), *opts,
             cwd=tmp_path, threads=1)
    metrics = work / 'metrics.json'
    run_tool(osp.join(ROOT, 'tools', 'test.py'), config, str(work / 'epoch_40.pth'),
             '--work-dir', str(work), '--dump-metrics', str(metrics), *opts, cwd=tmp_path,
             threads=1)
    top1 = json.loads(metrics.read_text())['accuracy/top1']
    assert top1 >= 60, top1
