"""ADE20K semantic segmentation with UperNet + AS-MLP (mmseg).

Full-size configs are built (parameter counts against the paper) and run one loss step on a
tiny input; the CPU demo config trains end to end through tools/train.py and is evaluated
through tools/test.py (single-scale and --tta), before and after training.
"""
import glob
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from helpers import run_tool
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, PARAM_SCHEDULERS, DefaultScope
from mmengine.runner import set_random_seed
from PIL import Image

from asmlp_mm import ASMLP
from asmlp_mm.analysis import build_model_from_config, count_params, paper, save_initial_weights
from asmlp_mm.datasets.ade import ShapesADE20KDataset
from asmlp_mm.datasets.shapes import SHAPE_CLASSES, make_ade_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
UPERNET = osp.join(ROOT, 'configs', 'upernet')
DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')

UPERNET_CONFIGS = [f'upernet_asmlp-{arch}_8xb2-160k_ade20k-512x512.py'
                   for arch in ('tiny', 'small', 'base')]
TINY = osp.join(UPERNET, 'upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py')


def seg_batch(model, sizes, num_classes, seed=0):
    """A preprocessed batch of random images and labels (255 = ignore) of the given sizes."""
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for h, w in sizes:
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, h, w), generator=g)
        label[:, :h // 4] = 255
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)
    return model.data_preprocessor({'inputs': inputs, 'data_samples': samples}, True)


def test_asmlp_is_an_mmseg_backbone():
    from mmseg.registry import MODELS as SEG_MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        backbone = SEG_MODELS.build(dict(type='ASMLP', arch=dict(embed_dims=8,
                                                                 depths=[1, 1, 1, 1]),
                                         out_indices=(0, 1, 2, 3)))
    assert type(backbone) is ASMLP
    feats = backbone(torch.randn(1, 3, 70, 90))
    assert [f.shape[1:] for f in feats] == [(8, 18, 23), (16, 9, 12), (32, 5, 6), (64, 3, 3)]


@pytest.mark.parametrize('config', UPERNET_CONFIGS)
def test_full_config_params_and_loss_step(config):
    cfg = Config.fromfile(osp.join(UPERNET, config))
    cfg.model.data_preprocessor.size = (64, 64)  # pad the tiny batch to 64, not 512
    assert cfg.model.backbone.type == 'ASMLP'
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
    model = revert_sync_batchnorm(build_model_from_config(cfg))  # SyncBN -> BN, as the runner
    assert count_params(model) == pytest.approx(paper.find_model(config).params, abs=1e6)
    model.train()
    with DefaultScope.overwrite_default_scope('mmseg'):
        data = seg_batch(model, [(64, 64), (64, 64)], 150)
        losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_recipe_optimizer_and_schedule():
    """AdamW lr 6e-5 / wd 0.01 without decay on the backbone's norms; 1500 warm-up
    iterations over a poly (power 1) down to 0 at 160k, as mmcv's schedule of the release."""
    cfg = Config.fromfile(TINY)
    cfg.model.backbone.arch = dict(embed_dims=8, depths=[1, 1, 1, 1])
    model = build_model_from_config(cfg)
    with DefaultScope.overwrite_default_scope('mmseg'):
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper.optimizer))
                      for s in cfg.param_scheduler]
    decay = {id(g['params'][0]): g['weight_decay'] for g in wrapper.optimizer.param_groups}
    for name, param in model.backbone.named_parameters():
        is_norm = isinstance(model.backbone.get_submodule(name.rsplit('.', 1)[0]),
                             torch.nn.GroupNorm)
        assert decay[id(param)] == (0. if is_norm else 0.01), name
    assert decay[id(model.decode_head.conv_seg.weight)] == 0.01

    def lr_after(steps):
        for _ in range(steps):
            for s in schedulers:
                s.step()
        return wrapper.optimizer.param_groups[0]['lr']

    assert wrapper.optimizer.param_groups[0]['lr'] == pytest.approx(6e-11)
    assert lr_after(750) == pytest.approx(6e-5 * (1 - 750 / 160000) / 2, rel=1e-3)
    assert lr_after(750) == pytest.approx(6e-5 * (1 - 1500 / 160000))
    assert lr_after(1000) == pytest.approx(6e-5 * (1 - 2500 / 160000))
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 8 * 2
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'


def test_real_tta_pipeline_scales_and_flips(tmp_path):
    """The full config's --tta pipeline: 6 scales of the 2048x512 test scale x 2 flips."""
    cfg = Config.fromfile(TINY)
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / 'a.jpg')
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / 'a.png')
    with DefaultScope.overwrite_default_scope('mmseg'):
        pipeline = Compose(cfg.tta_pipeline)
        out = pipeline(dict(img_path=str(tmp_path / 'a.jpg'),
                            seg_map_path=str(tmp_path / 'a.png'), reduce_zero_label=True,
                            seg_fields=[]))
    heights = sorted(x.shape[1] for x in out['inputs'])
    assert heights == sorted(2 * [int(512 * r) for r in (.5, .75, 1., 1.25, 1.5, 1.75)])
    flips = [s.flip for s in out['data_samples']]
    assert flips.count(True) == flips.count(False) == 6


def demo_dataset(root, pipeline):
    return ShapesADE20KDataset(data_root=str(root), pipeline=pipeline, data_prefix=dict(
        img_path='images/validation', seg_map_path='annotations/validation'))


def test_tta_runs_every_scale_and_flip(tmp_path):
    make_ade_dataset(str(tmp_path), num_train=1, num_val=2)
    cfg = Config.fromfile(DEMO)
    set_random_seed(0)
    model = revert_sync_batchnorm(build_model_from_config(cfg)).eval()
    inputs = []
    model.backbone.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with DefaultScope.overwrite_default_scope('mmseg'):
        tta = MODELS.build(dict(**cfg.tta_model, module=model))
        single = model.test_step(pseudo_collate([demo_dataset(tmp_path, cfg.test_pipeline)[0]]))
        assert len(inputs) == 1
        inputs.clear()
        sample = demo_dataset(tmp_path, cfg.tta_pipeline)[0]
        merged = tta.test_step(pseudo_collate([sample]))
    ratios = (0.5, 1.0, 1.5)
    assert len(inputs) == 2 * len(ratios)
    # every scale twice: the image and its mirror image
    by_size = {}
    for x in inputs:
        by_size.setdefault(tuple(x.shape[-2:]), []).append(x)
    assert sorted(h for h, _ in by_size) == [int(64 * r) for r in ratios]
    for plain, mirrored in by_size.values():
        torch.testing.assert_close(plain, mirrored.flip(-1))
    # one prediction of the original size, as single-scale testing
    assert merged[0].pred_sem_seg.shape == single[0].pred_sem_seg.shape == (64, 80)
    assert merged[0].gt_sem_seg.shape == (64, 80)


def test_make_ade_dataset(tmp_path):
    root = make_ade_dataset(str(tmp_path), seed=3, num_train=3, num_val=2, size=(48, 40))
    images = sorted(glob.glob(osp.join(root, 'images', '*', '*.jpg')))
    labels = sorted(glob.glob(osp.join(root, 'annotations', '*', '*.png')))
    assert len(images) == len(labels) == 5
    label = np.asarray(Image.open(labels[0]))
    assert label.dtype == np.uint8 and label.shape == (48, 40)
    assert set(np.unique(label)) <= set(range(len(SHAPE_CLASSES) + 1)) and label.max() > 0
    # deterministic in the seed
    again = make_ade_dataset(str(tmp_path / 'again'), seed=3, num_train=3, num_val=2,
                             size=(48, 40))
    np.testing.assert_array_equal(
        label, np.asarray(Image.open(osp.join(again, osp.relpath(labels[0], root)))))
    with pytest.raises(ValueError, match='size'):
        make_ade_dataset(str(tmp_path / 'bad'), size=4)
    # ADE20K semantics: 0 is ignored, 1..N become 0..N-1
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = demo_dataset(root, [dict(type='LoadAnnotations')])
        reduced = dataset[0]['gt_seg_map']
    raw = np.asarray(Image.open(dataset.get_data_info(0)['seg_map_path']))
    np.testing.assert_array_equal(reduced, np.where(raw == 0, 255, raw - 1))


def data_options(root):
    return [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def test_demo_trains_and_improves_miou(tmp_path):
    data = make_ade_dataset(str(tmp_path / 'shapes_ade'))
    work = tmp_path / 'work'
    options = ['--cfg-options', *data_options(data)]
    tools = osp.join(ROOT, 'tools')
    run_tool(osp.join(tools, 'train.py'), DEMO, '--work-dir', str(work), *options,
             cwd=tmp_path)
    trained = (work / 'last_checkpoint').read_text().strip()
    assert osp.isfile(trained)

    def evaluate(ckpt, name, *extra):
        metrics = work / 'metrics' / f'{name}.json'  # test.py makes the new folder
        out = run_tool(osp.join(tools, 'test.py'), DEMO, ckpt, '--work-dir', str(work),
                       '--dump-metrics', str(metrics), *extra, *options, cwd=tmp_path)
        assert 'per class results' in out and all(c in out for c in SHAPE_CLASSES)
        return json.loads(metrics.read_text())

    after = evaluate(trained, 'trained', '--show-dir', 'predictions')
    after_tta = evaluate(trained, 'tta', '--tta')

    save_initial_weights(DEMO, str(work / 'init.pth'))
    before = evaluate(str(work / 'init.pth'), 'init')

    print(f'mIoU before {before["mIoU"]:.2f}, after {after["mIoU"]:.2f}, '
          f'after ms+flip {after_tta["mIoU"]:.2f}')
    assert after['mIoU'] > before['mIoU'] + 15
    assert after_tta['mIoU'] > before['mIoU'] + 15
    # colour overlays of the predictions: one image per validation image
    drawn = glob.glob(str(work / '**' / '*ADE_validation_*.png'), recursive=True)
    assert len(drawn) == len(glob.glob(osp.join(data, 'images', 'validation', '*.jpg')))
    overlay = np.asarray(Image.open(drawn[0]).convert('RGB'))
    assert overlay.ndim == 3 and overlay.shape[0] == 64 and overlay.shape[1] in (80, 160)


def test_demo_through_mmseg_packaged_train_tool(tmp_path):
    """The configs also run through mmseg's own tools/train.py (shipped in the package)."""
    spec = importlib.util.find_spec('mmseg')
    train = osp.join(spec.submodule_search_locations[0], '.mim', 'tools', 'train.py')
    assert osp.isfile(train)
    data = make_ade_dataset(str(tmp_path / 'shapes_ade'), num_train=4, num_val=2)
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get('PYTHONPATH', '')]))
    run_tool(train, DEMO, '--work-dir', str(work), '--cfg-options', *data_options(data),
             'train_cfg.max_iters=3', 'train_cfg.val_interval=3', cwd=tmp_path, env=env)
    assert (work / 'iter_3.pth').is_file()
