import os
import os.path as osp
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import mmengine.fileio
from mmengine.fileio import get_file_backend

from asmlp_mm.checkpoint_io import CheckpointError, load_local_checkpoint
from asmlp_mm.datasets import make_classification_folder
from asmlp_mm.datasets.shapes import make_ade_dataset
from asmlp_mm.engine import find_resumable_checkpoint, reseed
from asmlp_mm.fast import memory
# applies the run-time fixes: the atomic local backend, the checkpoint loader
from asmlp_mm.runtime import AtomicLocalBackend

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    backend = get_file_backend(str(tmp_path / 'x.pth'))
    assert isinstance(backend, AtomicLocalBackend)
    target = tmp_path / 'ckpt.pth'
    backend.put(b'old', str(target))

    # a crash in the middle of writing leaves the previous file untouched
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr('os.fsync', crash)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'new contents', str(target))
    assert target.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth']


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_local_writes_get_the_mode_of_a_plain_write(tmp_path, umask):
    backend = get_file_backend(str(tmp_path / 'x.pth'))
    old = os.umask(umask)
    try:
        with open(tmp_path / 'plain', 'wb') as f:
            f.write(b'x')
        backend.put(b'x', str(tmp_path / 'atomic'))
        mmengine.fileio.dump({'a': 1}, str(tmp_path / 'dumped.pkl'))
    finally:
        os.umask(old)
    expected = (tmp_path / 'plain').stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ('atomic', 'dumped.pkl'):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


def test_find_resumable_checkpoint_skips_broken_files(tmp_path):
    torch.save({'state_dict': {}, 'meta': {'epoch': 1}}, tmp_path / 'epoch_1.pth')
    torch.save({'state_dict': {}, 'meta': {'epoch': 2}}, tmp_path / 'epoch_2.pth')
    data = (tmp_path / 'epoch_2.pth').read_bytes()
    (tmp_path / 'epoch_3.pth').write_bytes(data[:len(data) // 2])  # cut off by a crash
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')
    assert find_resumable_checkpoint(str(tmp_path / 'empty')) is None


def test_find_resumable_checkpoint_stays_in_a_copied_work_dir(tmp_path):
    """last_checkpoint names the file where it was saved: in a copy of the work dir, the
    original folder's."""
    import shutil
    original = tmp_path / 'original'
    original.mkdir()
    for epoch in (1, 2):
        torch.save({'state_dict': {}, 'meta': {'epoch': epoch}}, original / f'epoch_{epoch}.pth')
    (original / 'last_checkpoint').write_text(str(original / 'epoch_1.pth'))
    copy = tmp_path / 'copy'
    shutil.copytree(original, copy)
    assert find_resumable_checkpoint(str(copy)) == str(copy / 'epoch_1.pth')
    (copy / 'epoch_1.pth').unlink()
    assert find_resumable_checkpoint(str(copy)) == str(copy / 'epoch_2.pth')


def test_non_checkpoint_file_gives_clear_error(tmp_path):
    bad = tmp_path / 'notes.pth'
    bad.write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match='not|cannot load'):
        load_local_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_local_checkpoint(str(tmp_path / 'missing.pth'))


def test_reseed_is_a_function_of_its_keys():
    reseed(0, 3, 5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.rand(100)
    reseed(0, 3, 5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    reseed(0, 3, 6)
    assert torch.rand(1).item() != a[2]


SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')

# (config, data generator, training length, unit of the checkpoint names); drop path on so
# that the model draws random numbers too, besides the data augmentation
RUNS = {
    'cls': (CLS_DEMO, lambda root: make_classification_folder(root, 6, 3, size=32),
            ['train_cfg.max_epochs=4', 'train_cfg.val_interval=2',
             'default_hooks.checkpoint.interval=1'], 'epoch'),
    'seg': (SEG_DEMO, lambda root: make_ade_dataset(root, num_train=8, num_val=2),
            ['train_cfg.max_iters=4', 'train_cfg.val_interval=4',
             'default_hooks.checkpoint.interval=1'], 'iter'),
}


def train_cmd(task, work, data, resume=False):
    config, _, length, _ = RUNS[task]
    opts = [f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}', *length,
            'default_hooks.checkpoint.max_keep_ckpts=10', 'model.backbone.drop_path_rate=0.2']
    return [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
            str(work), *(['--resume'] if resume else []), '--cfg-options', *opts]


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize('task', sorted(RUNS))
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, task):
    _, make_data, _, unit = RUNS[task]
    data = tmp_path / 'data'
    make_data(str(data))
    run(train_cmd(task, tmp_path / 'full', data))

    # kill a second run as soon as it has saved step 2 (of 4)
    cut = tmp_path / 'cut'
    proc = subprocess.Popen(train_cmd(task, cut, data), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (cut / f'{unit}_2.pth').exists():
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    if (cut / f'{unit}_4.pth').exists():  # it finished before the kill: cut it back
        for step in (3, 4):
            (cut / f'{unit}_{step}.pth').unlink(missing_ok=True)
        (cut / 'last_checkpoint').write_text(str(cut / f'{unit}_2.pth'))

    log = run(train_cmd(task, cut, data, resume=True))
    assert 'resumed epoch' in log.lower()  # mmengine: 'resumed epoch: E, iter: I'
    full = torch.load(tmp_path / 'full' / f'{unit}_4.pth', weights_only=False)
    resumed = torch.load(cut / f'{unit}_4.pth', weights_only=False)
    for key, value in full['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), key
    losses = [c['message_hub']['log_scalars']['train/loss']._log_history[-2:].tolist()
              for c in (full, resumed)]
    assert losses[0] == losses[1]


FREE_64MB = '''
import os, sys, torch
from asmlp_mm.fast import keep_freed_memory
def resident():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
kept = keep_freed_memory()
assert keep_freed_memory() == kept  # a second call changes nothing
x = torch.ones(64 * 2**20 // 4)  # 64 MB, written
before = resident()
del x
print(kept, (before - resident()) / 2**20)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc, /proc')
@pytest.mark.parametrize('setting,kept', [
    ({}, True),
    ({'ASMLP_MM_FAST': '0'}, False),
    ({'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1'}, False),
])
def test_keep_freed_memory(setting, kept):
    """A CPU run keeps the 64 MB it frees (tools/train.py and test.py ask for it), unless
    turned off or the environment already chooses the allocator's behaviour. In a fresh
    process, since the setting lasts for the life of the process."""
    env = {k: v for k, v in os.environ.items()
           if k != memory.ENV_SWITCH and k not in memory.allocator_settings()}
    result = subprocess.run([sys.executable, '-c', FREE_64MB], env={**env, **setting},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    applied, returned_mb = result.stdout.split()
    assert applied == str(kept)
    if kept:
        assert float(returned_mb) < 8, returned_mb
    else:
        assert float(returned_mb) > 56, returned_mb


def test_check_fits_names_the_prefix_that_holds_the_model():
    """Where no key of the checkpoint is one of the model's but the model's are in it under
    a prefix, the error says so before the listed problems (a limit cuts them off)."""
    from asmlp_mm.checkpoint_io import CheckpointMismatchError, check_fits
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    state = {f'teacher.{key}': value for key, value in model.state_dict().items()}
    state['neck.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)problem\(s\)\n  none of its "
                       r"keys .* start with 'teacher.' followed by the model's\n  missing"):
        check_fits(model, state, 'x.pth', 'the model')
    with pytest.raises(CheckpointMismatchError, match=r": set prefix='teacher.' in cfg\n"):
        check_fits(model, state, 'x.pth', 'the model', prefix_option='cfg')
    state['0.bias'] = model[0].bias  # a key in common: no such prefix
    with pytest.raises(CheckpointMismatchError) as err:
        check_fits(model, state, 'x.pth', 'the model')
    assert 'none of its keys' not in str(err.value)


def test_fits_hook_for_fine_tuning_refuses_only_a_checkpoint_of_which_nothing_loads():
    """Training from load_from (exact=False) takes a checkpoint that leaves out a few
    weights, e.g. a head of another number of classes; not one that loads no weight."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from asmlp_mm.checkpoint_io import CheckpointMismatchError
    from asmlp_mm.engine import CheckpointFitsHook
    model = torch.nn.Sequential()
    model.add_module('backbone', torch.nn.Linear(3, 4))
    model.add_module('head', torch.nn.Linear(4, 2))
    runner = SimpleNamespace(model=model, cfg=Config(dict(load_from='x.pth')))
    other_head = dict(model.state_dict(), **{'head.weight': torch.zeros(5, 4),
                                             'head.bias': torch.zeros(5)})
    CheckpointFitsHook(exact=False).after_load_checkpoint(runner, {'state_dict': other_head})
    with pytest.raises(CheckpointMismatchError, match='shape of head.weight'):
        CheckpointFitsHook(exact=True).after_load_checkpoint(runner, {'state_dict': other_head})
    # by default (as the configs list it) exact unless training starts from load_from
    from mmengine.runner import EpochBasedTrainLoop
    train_loop = EpochBasedTrainLoop.__new__(EpochBasedTrainLoop)  # a built train loop
    for loop, resume, exact in ((train_loop, False, False), (train_loop, True, True),
                                (dict(type='EpochBasedTrainLoop'), False, True), (None, False,
                                                                                 True)):
        runner = SimpleNamespace(model=model, cfg=Config(dict(load_from='x.pth')),
                                 _train_loop=loop, _resume=resume)
        if exact:
            with pytest.raises(CheckpointMismatchError, match='shape of head.weight'):
                CheckpointFitsHook().after_load_checkpoint(runner, {'state_dict': other_head})
        else:
            CheckpointFitsHook().after_load_checkpoint(runner, {'state_dict': other_head})
    bare = {'weight': torch.zeros(4, 3), 'bias': torch.zeros(4)}
    with pytest.raises(CheckpointMismatchError, match=r"(?s)not one of its weights would load.*"
                       r"weights of the model's 'backbone' only; load them into it with "
                       r"model.backbone.init_cfg="):
        CheckpointFitsHook(exact=False).after_load_checkpoint(runner, {'state_dict': bare})


DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')


def built(config, **options):
    from mmengine.config import Config

    from asmlp_mm.analysis import build_model_from_config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    return build_model_from_config(cfg)


def test_model_fits_hook_names_heads_made_for_other_backbone_strides_and_channels():
    """patch_size=8 under heads made for stride 4 trained and evaluated without a word,
    with anchors over a quarter of the image; other channels failed at the first step
    with a shape error naming no config entry."""
    from asmlp_mm.engine.fits import backbone_fit_problems
    assert backbone_fit_problems(built(DET_DEMO)) == []
    assert backbone_fit_problems(built(SEG_DEMO)) == []
    problems = backbone_fit_problems(built(DET_DEMO, **{'model.backbone.patch_size': 8}))
    assert problems[0] == ('model.rpn_head.anchor_generator.strides begin with [4, 8, 16, '
                           '32], where the neck levels have strides [8, 16, 32, 64]: the '
                           'anchors would not cover the image')
    assert ('model.roi_head.mask_roi_extractor.2.featmap_strides is [4, 8, 16, 32], where '
            'the neck levels have strides [8, 16, 32, 64]') in problems
    assert 'at strides [8, 16, 32, 64]: arch, out_indices and patch_size' in problems[-1]
    problems = backbone_fit_problems(built(DET_DEMO, **{'model.backbone.out_indices': (1, 2, 3)}))
    assert problems[0] == 'model.neck.in_channels is [16, 32, 64, 128]'
    wide = {'model.backbone.arch.embed_dims': 32}
    assert backbone_fit_problems(built(SEG_DEMO, **wide))[:2] == [
        'model.decode_head.in_channels is [16, 32, 64, 128], but its inputs (in_index [0, 1, '
        '2, 3]) have [32, 64, 128, 256] channels',
        'model.auxiliary_head.in_channels is 64, but its inputs (in_index 2) have 128 '
        'channels']


def test_model_fits_hook_names_heads_of_another_class_count(tmp_path):
    """A head of 80 classes on a 3-class dataset trained a whole epoch, then failed in
    the metric with an IndexError; too few classes failed inside the loss."""
    from types import SimpleNamespace

    from asmlp_mm.engine import ConfigMismatchError, ModelFitsHook
    model = built(DET_DEMO, **{'model.roi_head.bbox_head.1.num_classes': 80})
    loader = SimpleNamespace(dataset=SimpleNamespace(
        metainfo=dict(classes=('square', 'circle', 'triangle'))))
    runner = SimpleNamespace(model=model, train_dataloader=loader, test_dataloader=loader)
    with pytest.raises(ConfigMismatchError, match=r"model.roi_head.bbox_head.1.num_classes "
                       r"is 80, but the dataset of train_dataloader has 3 classes \(square, "
                       r"circle, triangle\)$"):
        ModelFitsHook().before_train(runner)
    ModelFitsHook().before_run(runner)  # the backbone fits its heads
    runner.model = built(DET_DEMO)
    ModelFitsHook().before_test(runner)  # RPN's single class is not a mismatch


def test_resuming_with_another_number_of_processes_warns():
    """A 2-process checkpoint resumed in 1 process trained with half the total batch at
    the 2-process learning rate (also with --auto-scale-lr), without a word."""
    from types import SimpleNamespace

    from asmlp_mm.engine import ProcessCountHook
    warned = []
    runner = SimpleNamespace(_resume=True, logger=SimpleNamespace(warning=warned.append))
    checkpoint = {}
    ProcessCountHook().before_save_checkpoint(runner, checkpoint)
    assert checkpoint['meta']['world_size'] == 1  # this process, no process group
    ProcessCountHook().after_load_checkpoint(runner, checkpoint)
    assert warned == []
    checkpoint['meta']['world_size'] = 2
    ProcessCountHook().after_load_checkpoint(runner, checkpoint)
    assert len(warned) == 1 and warned[0].startswith(
        'resuming a checkpoint of a run of 2 process(es) with 1: the total batch changes '
        'by 1/2, but the learning rate stays')
    runner._resume = False  # load_from: a new run, with its own learning rate
    ProcessCountHook().after_load_checkpoint(runner, checkpoint)
    assert len(warned) == 1
