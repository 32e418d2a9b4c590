"""Fixes for the pinned stack (mmengine 0.10.7 on torch >= 2.6, CPU-only machines) and for
older torch releases.

Importing :mod:`asmlp_mm` applies :func:`patch_checkpoint_loading` and
:func:`silence_pkg_resources_warning` and registers the
classes below; :class:`~asmlp_mm.models.ASMLP` applies :func:`guard_group_norms`. Each item
says why it exists and when it can go.
"""
import warnings
from contextlib import contextmanager
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint_io import (CheckpointError, CheckpointNotFoundError,  # noqa: F401
                            load_local_checkpoint, load_url_checkpoint)
from .ops.pointwise import is_channels_last, is_traced


def silence_pkg_resources_warning() -> None:
    """Hide setuptools' "pkg_resources is deprecated" warning. The stack needs setuptools
    < 82, which still has pkg_resources (mmcv's build and mmengine's ``mmdet::`` config
    bases import it, and so do mmpretrain's tools), and it warns at each such import: four
    to six warnings a run that no user can act on. Remove once the OpenMMLab packages stop
    importing pkg_resources."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


#: PyTorch before 2.14 crashes (segmentation fault) in the CPU backward of GroupNorm when the
#: input is channels-last and needs no gradient while the norm's weight or bias does. In
#: AS-MLP that is the first norm after frozen layers, e.g. with ``frozen_stages >= 0``
#: (seen on torch 2.11 and 2.13; 2.14.1 works). Remove with the hook below once torch >= 2.14
#: is required.
GROUP_NORM_NEEDS_INPUT_GRAD = torch.__version__ < '2.14'


def _group_norm_input_with_grad(module: nn.GroupNorm, args):
    """Forward pre-hook: where the crash above would happen, the norm's input goes in as a
    leaf that requires grad (the same memory, detached), so that the backward takes the
    path that also computes the input's gradient, which nothing then uses."""
    x = args[0]
    if (torch.is_grad_enabled() and x.device.type == 'cpu' and not x.requires_grad
            and is_channels_last(x)
            and any(p.requires_grad for p in module.parameters(recurse=False))
            and not is_traced()):
        return (x.detach().requires_grad_(), ) + tuple(args[1:])
    return None


# it keeps nothing and changes no value: the fast paths need not make way for it
_group_norm_input_with_grad.keeps_nothing = True


def guard_group_norms(model: nn.Module) -> None:
    """Give every GroupNorm of ``model`` the hook above, on the torch versions that need it
    (:data:`GROUP_NORM_NEEDS_INPUT_GRAD`); elsewhere do nothing."""
    if GROUP_NORM_NEEDS_INPUT_GRAD:
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.register_forward_pre_hook(_group_norm_input_with_grad)


def load_from_local(filename, map_location=None):
    """mmengine's local-file checkpoint scheme: :func:`load_local_checkpoint` (mmengine
    logs the scheme by the name of this function)."""
    return load_local_checkpoint(filename, map_location)


def load_from_http(filename, map_location=None):
    """mmengine's http(s) checkpoint scheme: :func:`load_url_checkpoint`."""
    return load_url_checkpoint(filename, map_location)


def patch_checkpoint_loading():
    """Route mmengine's loading of checkpoint files and URLs through
    :func:`load_local_checkpoint`, which reads tensors and plain data and runs nothing.

    mmengine 0.10.7 reads local files with ``torch.load`` as torch's default has it, which
    is ``weights_only=True`` since torch 2.6 and refuses mmengine's own training
    checkpoints (``--resume`` and ``load_from`` fail); it reads downloads with
    ``torch.hub.load_state_dict_from_url``, which unpickles anything. This covers
    ``load_from``, ``--resume``, ``init_cfg=dict(type='Pretrained')`` and
    ``load_checkpoint``, which all go through ``CheckpointLoader``. Remove when mmengine
    reads checkpoints safely itself (mmengine > 0.10.7).
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http,
                                     force=True)


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed precision by ``torch.autocast`` without a loss scaler, on any device.

    mmengine's ``AmpOptimWrapper`` refuses to start without CUDA/NPU/MLU. bfloat16 has the
    range of float32, so it needs no loss scaling, and CPU autocast supports it: this
    wrapper makes ``tools/train.py --amp`` work on CPU. Remove when mmengine's wrapper
    accepts CPU.

    Args:
        dtype (str): Autocast dtype. Defaults to 'bfloat16'.
        modules (list[str], optional): Names of the submodules (e.g. ``['backbone',
            'neck']``) that run under autocast, each returning its floating-point outputs
            as float32; the rest of the model runs in float32. For models whose other
            parts call operators without low-precision kernels on this device (mmcv's
            CPU ``nms`` and ``RoIAlign`` take float32 only). Defaults to None: the whole
            forward runs under autocast.
        **kwargs: Arguments of :class:`OptimWrapper`.
    """

    def __init__(self, dtype: str = 'bfloat16', modules: Optional[Sequence[str]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)
        self.modules = None if modules is None else list(modules)

    @contextmanager
    def optim_context(self, model):
        device = next(model.parameters()).device.type
        with super().optim_context(model):
            if self.modules is None:
                with torch.autocast(device_type=device, dtype=self.cast_dtype):
                    yield
            else:
                with autocast_inside(model, self.modules, device, self.cast_dtype):
                    yield


def to_float32(value):
    """``value`` with its floating-point tensors (also inside tuples, lists and dicts) in
    float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, to_float32(v)) for k, v in value.items())
    return value


@contextmanager
def autocast_inside(model: torch.nn.Module, names: Sequence[str], device: str,
                    dtype: torch.dtype):
    """Run the calls of ``model``'s submodules ``names`` (of the wrapped module, for a
    DDP-wrapped model) under ``torch.autocast``, their outputs cast back to float32,
    while this context is open."""
    inner = getattr(model, 'module', model)
    handles, open_contexts = [], []

    def enter(module, args):
        context = torch.autocast(device_type=device, dtype=dtype)
        context.__enter__()
        open_contexts.append(context)

    def leave(module, args, output):
        open_contexts.pop().__exit__(None, None, None)
        return to_float32(output)

    try:
        for name in names:
            try:
                module = inner.get_submodule(name)
            except AttributeError:
                raise ValueError(f'AutocastOptimWrapper: the model ({type(inner).__name__}) '
                                 f'has no submodule {name!r} to run under autocast') from None
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        while open_contexts:  # a forward that failed before its forward hook could run
            open_contexts.pop().__exit__(None, None, None)


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes of a group, differentiable: the gradient of
    every process's input is the sum of the output gradients of all processes. (What
    ``torch.distributed.nn.functional.all_reduce`` does; torch deprecates that one and
    warns on every call, with no public replacement that has autograd.)"""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist
        ctx.group = group
        total = x.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist
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
        import torch.distributed as dist
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


#: Arguments of mmengine's ``AmpOptimWrapper`` that :class:`AutocastOptimWrapper` (an
#: ``OptimWrapper``) does not take, besides ``dtype``, which both take
AMP_ONLY_ARGS = ('loss_scale', 'use_fsdp')


def enable_amp(cfg):
    """Turn on mixed precision in a config: fp16 AMP on CUDA, bf16 autocast elsewhere.

    Without CUDA an ``AmpOptimWrapper`` config becomes an :class:`AutocastOptimWrapper`
    one, without the loss scaling arguments that only ``AmpOptimWrapper`` takes
    (:data:`AMP_ONLY_ARGS`): bfloat16 needs no loss scaling. For detectors (mmdet
    configs) only the backbone and the neck run under autocast there: the heads call
    mmcv's CPU ``nms`` and ``RoIAlign``, which take float32 only."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper',
                                                   'AutocastOptimWrapper'):
        raise ValueError(f'--amp supports OptimWrapper configs, got {wrapper["type"]}')
    if torch.cuda.is_available():
        wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
        return
    for key in AMP_ONLY_ARGS:
        wrapper.pop(key, None)
    wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')
    modules = cpu_autocast_modules(cfg)
    if modules is not None:
        wrapper['modules'] = modules


#: The submodules that bfloat16 autocast on CPU is limited to, by toolbox (the config's
#: ``default_scope``): mmdet's heads call mmcv's CPU ``nms`` and ``RoIAlign``, which take
#: float32 only.
CPU_AUTOCAST_ONLY = {'mmdet': ('backbone', 'neck')}


def cpu_autocast_modules(cfg) -> Optional[List[str]]:
    """The names of the model's submodules that bfloat16 autocast on CPU may cover
    (:data:`CPU_AUTOCAST_ONLY`, those the config's model has), or None: all of it."""
    names = CPU_AUTOCAST_ONLY.get(cfg.get('default_scope'))
    return None if names is None else [name for name in names if cfg.model.get(name)]


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
    import datetime

    import torch.distributed as dist
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
