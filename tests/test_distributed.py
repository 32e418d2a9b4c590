"""Multi-process training and testing on CPU (gloo), as mmengine launches it."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from asmlp_mm.compat import GlooSyncBatchNorm
from asmlp_mm.datasets import make_classification_folder

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')


def _sync_bn_worker(rank, port, x, weight, grad_out, results):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    bn = torch.nn.SyncBatchNorm(x.shape[1])
    bn.__class__ = GlooSyncBatchNorm
    bn.weight.data.copy_(weight)
    part = x.chunk(2)[rank].clone().requires_grad_()
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


def launch(script, *args, nproc=2):
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    cmd = ['bash', osp.join(ROOT, 'tools', script), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
    log = launch('dist_train.sh', CLS_DEMO, '2', '--work-dir', str(work), *opts)
    assert 'Distributed launcher: pytorch' in log or 'distributed' in log.lower()
    ckpt = work / 'epoch_2.pth'
    assert ckpt.is_file()
    launch('dist_test.sh', CLS_DEMO, str(ckpt), '2', '--work-dir', str(work),
           '--dump-metrics', str(tmp_path / 'two.json'), *opts)
    single = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), CLS_DEMO, str(ckpt),
         '--work-dir', str(work), '--dump-metrics', str(tmp_path / 'one.json'), *opts],
        capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((tmp_path / 'two.json').read_text())
    one = json.loads((tmp_path / 'one.json').read_text())
    assert two == one and 'accuracy/top1' in one


def coco_options(root):
    from asmlp_mm.datasets.coco import annotation_file, make_coco_dataset
    make_coco_dataset(root, num_train=8, num_val=4)
    root = root.rstrip('/') + '/'
    return [f'{d}.dataset.data_root={root}' for d in ('train_dataloader', 'val_dataloader',
                                                       'test_dataloader')] + \
        [f'{e}.ann_file={annotation_file(root, "val")}'
         for e in ('val_evaluator', 'test_evaluator')] + \
        ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'], 'epoch_1.pth'


def ade_options(root):
    from asmlp_mm.datasets.ade import make_ade_dataset
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
                 '--work-dir', str(work), '--cfg-options', *options)
    assert 'Distributed training: True' in log
    state = torch.load(work / checkpoint, weights_only=False)['state_dict']
    assert any(k.endswith('running_mean') and 'head' in k for k in state)
