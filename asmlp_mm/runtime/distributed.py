"""Distributed training on CPU (gloo) processes.

mmengine 0.10.7 starts a 'pytorch' launch with ``torch.cuda.set_device`` and the nccl
backend and wraps the model with CUDA ``device_ids``, and torch's ``SyncBatchNorm`` takes
CUDA tensors only (pytorch/pytorch#78078, CPU support, was closed unmerged).
:func:`adapt_to_device` starts gloo instead and wraps the model in
:class:`CPUDistributedDataParallel`, which syncs batch norms with
:class:`GlooSyncBatchNorm`. They can go when mmengine launches CPU processes itself and
torch syncs batch norms on CPU.
"""
import datetime

import torch
import torch.distributed as dist
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes of a group, differentiable: the gradient of
    every process's input is the sum of the output gradients of all processes. (What
    ``torch.distributed.nn.functional.all_reduce`` does; torch deprecates that one and
    warns on every call, with no public replacement that has autograd.)"""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        total = x.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class GlooSyncBatchNorm(_BatchNorm):
    """A SyncBatchNorm for CPU tensors (gloo process groups), with SyncBN's state dict.

    torch's SyncBatchNorm raises for CPU inputs, and DDP refuses any SyncBatchNorm
    subclass on CPU, so this is a plain batch norm whose training statistics are computed
    over all processes with a differentiable all-reduce of per-channel sums, in float32
    whatever the input's dtype (under bfloat16 autocast, ``--amp`` on CPU, E[x^2] - E[x]^2
    in bfloat16 cancels to 0 for inputs far from zero), and the output has the input's
    dtype. It replaces ``nn.SyncBatchNorm`` layers in place (see
    :class:`CPUDistributedDataParallel`). Remove when torch supports CPU SyncBatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {x.dim()}D input)')

    def forward(self, x):
        group = getattr(self, 'process_group', None)
        if not self.training or not dist.is_initialized() \
                or dist.get_world_size(group) < 2:
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = x.new_full((1, ), x.numel() / channels)
        stats = _SumOverProcesses.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]),
                                        group or dist.group.WORLD)
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels:2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None \
                    else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(dtype)


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU (gloo) processes.

    The runner always passes ``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU
    modules: this wrapper drops it. It also turns the model's ``SyncBatchNorm`` layers
    into :class:`GlooSyncBatchNorm`, so that SyncBN stays synchronized on CPU. Remove when
    mmengine stops passing device ids for CPU and torch syncs BN on CPU.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        for m in module.modules():
            if isinstance(m, torch.nn.SyncBatchNorm):
                m.__class__ = GlooSyncBatchNorm
        super().__init__(module=module, device_ids=None, **kwargs)


def adapt_to_device(cfg):
    """Make a config's distributed settings work on a machine without CUDA.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` when it initializes a 'pytorch'
    launch, defaults to the nccl backend, and wraps the model with CUDA ``device_ids``.
    Without CUDA this initializes the gloo process group itself (the runner then skips its
    own initialization), with the other entries of ``env_cfg.dist_cfg`` (``timeout`` in
    seconds, as mmengine takes it), and wraps the model in
    :class:`CPUDistributedDataParallel`: as mmengine's default wrapper
    (``broadcast_buffers=False``, the config's ``find_unused_parameters``, which mmengine
    reads only when it builds that wrapper itself), or the config's ``model_wrapper_cfg``
    with :class:`MMDistributedDataParallel` replaced. The 'slurm' and 'mpi' launchers,
    which mmengine starts on CUDA devices only, are refused (``ValueError``).
    """
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return
    if cfg.launcher != 'pytorch':
        raise ValueError(f'--launcher {cfg.launcher} needs CUDA (mmengine sets a CUDA '
                         f'device for it); on CPU, start the processes with --launcher '
                         f'pytorch (tools/dist_train.sh, tools/dist_test.sh)')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        options = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'init_backend')}
        if options.get('timeout') is not None:
            options['timeout'] = datetime.timedelta(seconds=options['timeout'])
        dist.init_process_group(backend='gloo', **options)
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['type'] = 'CPUDistributedDataParallel'
