"""Multi-process training and testing on CPU (gloo), as mmengine launches it."""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, run_tool

from asmlp_mm.datasets import make_classification_folder
from asmlp_mm.runtime import GlooSyncBatchNorm, adapt_to_device

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')


def _sync_bn_worker(rank, port, x, weight, grad_out, results):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    bn = torch.nn.SyncBatchNorm(x.shape[1])
    bn.__class__ = GlooSyncBatchNorm
    bn.weight.data.copy_(weight)
    part = x.chunk(2)[rank].clone().requires_grad_()
    with warnings.catch_warnings():
        # torch.distributed.nn.functional.all_reduce, used before, warned on every call
        warnings.simplefilter('error', FutureWarning)
        out = bn(part)
        out.backward(grad_out.chunk(2)[rank])
    results[rank] = (out.detach(), part.grad, bn.weight.grad, bn.running_mean,
                     bn.running_var)
    dist.destroy_process_group()


def test_gloo_sync_batchnorm_equals_batchnorm_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5) * 3 + 1
    weight = torch.rand(3) + 0.5
    grad_out = torch.randn(6, 3, 4, 5)
    results = mp.Manager().dict()
    mp.spawn(_sync_bn_worker, args=(free_port(), x, weight, grad_out, results), nprocs=2)

    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data.copy_(weight)
    full = x.clone().requires_grad_()
    out = bn(full)
    out.backward(grad_out)
    outs = torch.cat([results[0][0], results[1][0]])
    grads = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(outs, out.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads, full.grad, rtol=1e-4, atol=1e-5)
    # the affine gradients are summed by DDP; here each rank holds its share
    torch.testing.assert_close(results[0][2] + results[1][2], bn.weight.grad)
    torch.testing.assert_close(results[0][3], bn.running_mean)
    torch.testing.assert_close(results[0][4], bn.running_var)


def _sync_bn_bf16_worker(rank, port, x, results):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    bn = torch.nn.SyncBatchNorm(x.shape[1])
    bn.__class__ = GlooSyncBatchNorm
    out = bn(x.chunk(2)[rank].bfloat16())  # what bf16 autocast (--amp on CPU) gives it
    results[rank] = (out.dtype, bn.running_mean.clone(), bn.running_var.clone())
    dist.destroy_process_group()


def test_gloo_sync_batchnorm_keeps_float32_statistics_of_bfloat16_inputs():
    """`dist_train.sh SEG_CONFIG 2 --amp` failed in the running mean's update (a bfloat16
    mean into a float32 buffer); in bfloat16, E[x^2] - E[x]^2 cancels to 0 for inputs
    of mean 50 and standard deviation 1."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 5) + 50
    results = mp.Manager().dict()
    mp.spawn(_sync_bn_bf16_worker, args=(free_port(), x, results), nprocs=2)
    bn = torch.nn.BatchNorm2d(3)
    bn(x.bfloat16().float())  # the same inputs, rounded as the ranks got them
    assert results[0][0] == torch.bfloat16
    torch.testing.assert_close(results[0][1], bn.running_mean)
    torch.testing.assert_close(results[0][2], bn.running_var, rtol=1e-3, atol=1e-4)
    assert results[0][2].min() > 0.05  # 0.1 x the variance of about 1, not 0.1 x 0 + 0.9


@pytest.mark.parametrize('given,wrapper', [
    ({}, dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
              find_unused_parameters=False)),
    ({'find_unused_parameters': True}, dict(type='CPUDistributedDataParallel',
                                            broadcast_buffers=False,
                                            find_unused_parameters=True)),
    ({'model_wrapper_cfg': dict(type='MMDistributedDataParallel', find_unused_parameters=True)},
     dict(type='CPUDistributedDataParallel', find_unused_parameters=True)),
])
def test_cpu_launch_keeps_the_configs_ddp_and_process_group_settings(monkeypatch, given,
                                                                     wrapper):
    """On CPU the config's find_unused_parameters was ignored (mmengine reads it only when
    it builds the wrapper itself), a config's MMDistributedDataParallel failed on CUDA
    device ids, and dist_cfg.timeout was not applied to the gloo group."""
    import datetime

    from mmengine.config import Config

    started = {}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(dist, 'init_process_group', lambda **kwargs: started.update(kwargs))
    dist_cfg = dict(backend='nccl', timeout=7200)
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dist_cfg), **given))
    adapt_to_device(cfg)
    assert started == dict(backend='gloo', timeout=datetime.timedelta(seconds=7200))
    assert cfg.model_wrapper_cfg == wrapper
    with pytest.raises(ValueError, match='--launcher slurm needs CUDA.*--launcher pytorch'):
        adapt_to_device(Config(dict(launcher='slurm')))


def launch(script, *args, cwd):
    """Run a launcher script in ``cwd`` (mmengine's result collection writes a
    ``.dist_test`` folder into the working folder)."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    cmd = ['bash', osp.join(ROOT, 'tools', script), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def test_two_process_train_and_test_match_single_process(tmp_path):
    data = tmp_path / 'data'
    make_classification_folder(str(data), num_train=6, num_val=5, size=32)
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}', 'train_cfg.max_epochs=2',
            'train_cfg.val_interval=2', 'train_dataloader.batch_size=4']
    work = tmp_path / 'work'
    log = launch('dist_train.sh', CLS_DEMO, '2', '--work-dir', str(work), *opts, cwd=tmp_path)
    assert 'Distributed launcher: pytorch' in log or 'distributed' in log.lower()
    ckpt = work / 'epoch_2.pth'
    assert ckpt.is_file()
    launch('dist_test.sh', CLS_DEMO, str(ckpt), '2', '--work-dir', str(work),
           '--dump-metrics', str(tmp_path / 'two.json'), *opts, cwd=tmp_path)
    single = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), CLS_DEMO, str(ckpt),
         '--work-dir', str(work), '--dump-metrics', str(tmp_path / 'one.json'), *opts],
        capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((tmp_path / 'two.json').read_text())
    one = json.loads((tmp_path / 'one.json').read_text())
    assert two == one and 'accuracy/top1' in one


def coco_options(root):
    from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
    make_coco_dataset(root, num_train=8, num_val=4)
    root = root.rstrip('/') + '/'
    return [f'{d}.dataset.data_root={root}' for d in ('train_dataloader', 'val_dataloader',
                                                       'test_dataloader')] + \
        [f'{e}.ann_file={annotation_file(root, "val")}'
         for e in ('val_evaluator', 'test_evaluator')] + \
        ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'], 'epoch_1.pth'


def ade_options(root):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    make_ade_dataset(root, num_train=8, num_val=2)
    return [f'{d}.dataset.data_root={root}' for d in ('train_dataloader', 'val_dataloader',
                                                      'test_dataloader')] + \
        ['train_cfg.max_iters=4', 'train_cfg.val_interval=4',
         'default_hooks.checkpoint.interval=4'], 'iter_4.pth'


@pytest.mark.parametrize('config,make_options', [
    ('cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py', coco_options),
    ('upernet_asmlp-demo_shapes-ade.py', ade_options),
], ids=['det', 'seg'])
def test_two_process_training_with_syncbn_heads(tmp_path, config, make_options):
    """The heads' SyncBN layers stay synchronized (GlooSyncBatchNorm) on CPU processes."""
    options, checkpoint = make_options(str(tmp_path / 'data'))
    work = tmp_path / 'work'
    log = launch('dist_train.sh', osp.join(ROOT, 'configs', 'demo', config), '2',
                 '--work-dir', str(work), '--cfg-options', *options, cwd=tmp_path)
    assert 'Distributed training: True' in log
    state = torch.load(work / checkpoint, weights_only=False)['state_dict']
    assert any(k.endswith('running_mean') and 'head' in k for k in state)


def coco_test_options(root):
    from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
    make_coco_dataset(root, num_train=1, num_val=3, size=64)
    root = root.rstrip('/') + '/'
    return [f'test_dataloader.dataset.data_root={root}',
            f'test_evaluator.ann_file={annotation_file(root, "val")}']


def ade_test_options(root):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    make_ade_dataset(root, num_train=1, num_val=3)
    return [f'test_dataloader.dataset.data_root={root}']


def assert_same_predictions(one, two, where='predictions'):
    """Nested dicts/lists of tensors, arrays, masks and plain values are equal (floats
    within float32 rounding)."""
    assert type(one) is type(two), where
    if isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            assert_same_predictions(one[key], two[key], f'{where}.{key}')
    elif isinstance(one, (list, tuple)):
        assert len(one) == len(two), where
        for i, (a, b) in enumerate(zip(one, two)):
            assert_same_predictions(a, b, f'{where}[{i}]')
    elif hasattr(one, 'to_ndarray'):  # mmdet's BitmapMasks / PolygonMasks
        np.testing.assert_array_equal(one.to_ndarray(), two.to_ndarray(), err_msg=where)
    elif isinstance(one, (torch.Tensor, np.ndarray)):
        torch.testing.assert_close(torch.as_tensor(one), torch.as_tensor(two), rtol=1e-5,
                                   atol=1e-5, msg=where)
    else:
        assert one == two, where


@pytest.mark.parametrize('config,make_options', [
    ('cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py', coco_test_options),
    ('upernet_asmlp-demo_shapes-ade.py', ade_test_options),
], ids=['det', 'seg'])
def test_two_process_test_equals_one_process(tmp_path, config, make_options):
    """tools/dist_test.sh with 2 gloo processes gives the metrics and the predictions of
    one process: 3 images, so one rank also gets a padding sample that must be dropped."""
    from asmlp_mm.analysis import save_initial_weights
    config = osp.join(ROOT, 'configs', 'demo', config)
    options = ['--cfg-options', 'test_dataloader.batch_size=1',
               *make_options(str(tmp_path / 'data'))]
    checkpoint = str(tmp_path / 'init.pth')
    save_initial_weights(config, checkpoint)
    work = tmp_path / 'work'
    out = launch('dist_test.sh', config, checkpoint, '2', '--work-dir', str(work),
                 '--dump-metrics', str(tmp_path / 'two.json'), '--out',
                 str(tmp_path / 'two.pkl'), '--show-dir', 'drawn', *options, cwd=tmp_path)
    # mmengine's visualizers draw on process 0 only: said, not silently half done
    assert '--show-dir with 2 processes: the visualizers draw on process 0 only' in out
    run_tool(osp.join(ROOT, 'tools', 'test.py'), config, checkpoint, '--work-dir', work,
             '--dump-metrics', tmp_path / 'one.json', '--out', tmp_path / 'one.pkl',
             *options, cwd=tmp_path, threads=1)
    one = json.loads((tmp_path / 'one.json').read_text())
    two = json.loads((tmp_path / 'two.json').read_text())
    assert one and one.keys() == two.keys()
    assert two == pytest.approx(one, abs=1e-6)
    with open(tmp_path / 'one.pkl', 'rb') as f:
        one_predictions = pickle.load(f)
    with open(tmp_path / 'two.pkl', 'rb') as f:
        two_predictions = pickle.load(f)
    assert len(one_predictions) == 3
    assert_same_predictions(one_predictions, two_predictions)


def test_slurm_script_asks_srun_for_one_task_per_gpu(tmp_path):
    """tools/slurm_train.sh builds the srun command of an mmdet-style slurm launch (run
    here with a stand-in srun that records its arguments)."""
    calls = tmp_path / 'srun_calls'
    srun = tmp_path / 'bin' / 'srun'
    srun.parent.mkdir()
    srun.write_text(f'#!/bin/sh\nprintf "%s\\037" "$@" >> {calls}\necho >> {calls}\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f'{srun.parent}:{os.environ["PATH"]}', GPUS='4',
               GPUS_PER_NODE='2', PYTHON='python3')
    script = osp.join(ROOT, 'tools', 'slurm_train.sh')
    for args in (['part', 'job', 'cfg.py', 'out', '--cfg-options', 'a=1'],
                 ['part', 'job', 'cfg.py']):
        subprocess.run(['bash', script, *args], env=env, check=True, capture_output=True,
                       cwd=tmp_path)
    with_dir, without = [line.split('\x1f')[:-1] for line in calls.read_text().splitlines()]
    train = osp.join(ROOT, 'tools', 'train.py')
    assert with_dir[:6] == ['-p', 'part', '--job-name=job', '--gres=gpu:2', '--ntasks=4',
                            '--ntasks-per-node=2']
    assert with_dir[-8:] == ['python3', '-u', train, 'cfg.py', '--work-dir=out',
                             '--launcher=slurm', '--cfg-options', 'a=1']
    assert without[-6:] == ['python3', '-u', train, 'cfg.py', '--work-dir=work_dirs/job',
                            '--launcher=slurm']


@pytest.mark.parametrize('script,args,message', [
    ('dist_train.sh', [], 'usage: bash tools/dist_train.sh CONFIG NUM_PROCS'),
    ('dist_test.sh', ['CONFIG', 'CKPT'], 'usage: bash tools/dist_test.sh CONFIG CHECKPOINT '
     'NUM_PROCS'),
    ('dist_train.sh', ['CONFIG', '--amp'], "got '--amp'"),
    ('dist_test.sh', ['CONFIG', 'CKPT', '0'], "got '0'"),
    ('dist_test.sh', ['CONFIG', 'CKPT', '00'], "got '00'"),
])
def test_dist_scripts_name_a_missing_or_bad_argument(script, args, message):
    """With an argument left out they exited silently (set -e and shift), with rc 1."""
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize('nproc', ['8', '12', 'auto', 'cpu', 'gpu'])
def test_dist_scripts_pass_numbers_and_torchruns_names_on(nproc):
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), 'CONFIG', nproc,
                             '--cfg-options', 'a=1'], capture_output=True, text=True,
                            env=dict(os.environ, PYTHON='echo'))
    assert result.returncode == 0, result.stderr
    assert f'--nproc_per_node={nproc} ' in result.stdout
    assert result.stdout.rstrip().endswith('CONFIG --launcher pytorch --cfg-options a=1')
