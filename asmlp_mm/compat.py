"""Fixes for the pinned stack (mmengine 0.10.7 on torch >= 2.6, CPU-only machines) and for
older torch releases.

Importing :mod:`asmlp_mm` applies :func:`patch_checkpoint_loading` and
:func:`silence_pkg_resources_warning` and registers the classes below. Each item says why
it exists and when it can go.
"""
import inspect
import warnings
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint_io import (CheckpointError, CheckpointNotFoundError,  # noqa: F401
                            load_local_checkpoint, load_url_checkpoint)


def silence_pkg_resources_warning() -> None:
    """Hide setuptools' "pkg_resources is deprecated" warning. The stack needs setuptools
    < 82, which still has pkg_resources (mmcv's build and mmengine's ``mmdet::`` config
    bases import it, and so do mmpretrain's tools), and it warns at each such import: four
    to six warnings a run that no user can act on. Remove once the OpenMMLab packages stop
    importing pkg_resources."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


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

    mmengine's ``AmpOptimWrapper`` refuses to start without CUDA/NPU/MLU/MUSA. bfloat16 has
    the range of float32, so it needs no loss scaling, and CPU autocast supports it:
    :class:`AmpFallbackOptimWrapperConstructor` builds this wrapper instead there, for the
    mixed-precision configs and ``tools/train.py --amp``. Remove when mmengine's wrapper
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


#: Arguments that only mmengine's ``AmpOptimWrapper`` takes among the wrappers an AMP config
#: may be switched to (:class:`AutocastOptimWrapper` takes ``dtype``, ``OptimWrapper`` none)
AMP_ONLY_ARGS = ('loss_scale', 'use_fsdp', 'dtype')


def amp_device_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` runs here: it asserts a CUDA, NPU, MLU or MUSA
    device when it is built."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AmpFallbackOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, for configs that train in mixed precision as the
    released recipes did (``type='AmpOptimWrapper'``) and must run on CPU too, where
    mmengine's ``AmpOptimWrapper`` refuses to start.

    The ImageNet and COCO configs name it (``constructor=...``), and so do the others (for
    ``--amp``): whatever builds their optimizer wrapper through mmengine (tools/train.py,
    mmdet's, mmseg's and mmpretrain's own train.py, with or without their ``--amp``), this
    is the one place where the config meets the machine:

    - ``AmpOptimWrapper`` as configured where it runs (:func:`amp_device_available`);
    - elsewhere an :class:`AutocastOptimWrapper` in bfloat16, which has float32's range and
      needs no loss scaling, over the submodules of :data:`CPU_AUTOCAST_ONLY` for the
      toolbox that the model's class comes from, said once in the log;
    - another wrapper type, which a derived config or ``--cfg-options`` switches to
      (``optim_wrapper.type=OptimWrapper`` trains in float32), is built without the
      inherited :data:`AMP_ONLY_ARGS` that it does not take.

    Remove when mmengine's ``AmpOptimWrapper`` runs on CPU.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        cfg = dict(self.optim_wrapper_cfg)
        if cfg.get('type') == 'AmpOptimWrapper' and not amp_device_available():
            inner = getattr(model, 'module', model)
            modules = _autocast_only(_toolbox(inner),
                                     lambda name: getattr(inner, name, None) is not None)
            cfg.update(type='AutocastOptimWrapper', dtype='bfloat16')
            if modules is not None:
                cfg['modules'] = modules
            part = ('the whole model' if modules is None
                    else ' and '.join(modules) or 'no part of the model')
            print_log(f'AmpOptimWrapper needs a CUDA, NPU, MLU or MUSA device and there is '
                      f'none: mixed precision runs as bfloat16 autocast of {part} '
                      f'(AutocastOptimWrapper), without loss scaling; '
                      f'--cfg-options optim_wrapper.type=OptimWrapper trains in float32',
                      logger='current')
        wrapper = cfg.get('type', 'OptimWrapper')
        if isinstance(wrapper, str):
            wrapper = OPTIM_WRAPPERS.get(wrapper)
        if wrapper is not None:  # else the build below names the unknown type
            takes = inspect.signature(wrapper).parameters
            for key in AMP_ONLY_ARGS:
                if key not in takes:
                    cfg.pop(key, None)
        self.optim_wrapper_cfg = cfg
        return super().__call__(model)


def enable_amp(cfg):
    """Turn on mixed precision in a config (``tools/train.py --amp``): ``AmpOptimWrapper``
    with dynamic loss scaling, built by :class:`AmpFallbackOptimWrapperConstructor`, so
    float16 AMP on CUDA and bfloat16 autocast on CPU. A config that already asks for
    :class:`AutocastOptimWrapper` keeps it: it runs on any device."""
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in ('OptimWrapper', 'AmpOptimWrapper', 'AutocastOptimWrapper'):
        raise ValueError(f'--amp supports OptimWrapper configs, got {kind}')
    if kind == 'AutocastOptimWrapper':
        return
    fallback = AmpFallbackOptimWrapperConstructor.__name__
    constructor = wrapper.get('constructor', 'DefaultOptimWrapperConstructor')
    if constructor in ('DefaultOptimWrapperConstructor', fallback):
        wrapper['constructor'] = fallback
    elif not amp_device_available():
        raise ValueError(f'--amp: AmpOptimWrapper needs a CUDA device without one, and the '
                         f'config builds its optimizer wrapper with {constructor}, which '
                         f'cannot fall back to bfloat16 autocast as {fallback} does')
    wrapper['type'] = 'AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')


#: The submodules that bfloat16 autocast on CPU is limited to, by toolbox (the default
#: scope): mmdet's heads call mmcv's CPU ``nms`` and ``RoIAlign``, which take float32 only.
CPU_AUTOCAST_ONLY = {'mmdet': ('backbone', 'neck')}


def _autocast_only(scope: Optional[str], has: Callable[[str], bool]) -> Optional[List[str]]:
    names = CPU_AUTOCAST_ONLY.get(scope)
    return None if names is None else [name for name in names if has(name)]


def _toolbox(model: nn.Module) -> Optional[str]:
    """The toolbox of :data:`CPU_AUTOCAST_ONLY` that the class of ``model``, or one of its
    bases, comes from (a run's default scope may be another run's, in one process)."""
    for cls in type(model).__mro__:
        package = cls.__module__.partition('.')[0]
        if package in CPU_AUTOCAST_ONLY:
            return package
    return None


def cpu_autocast_modules(cfg) -> Optional[List[str]]:
    """The names of the submodules of a config's model that bfloat16 autocast on CPU may
    cover (:data:`CPU_AUTOCAST_ONLY`, those the model has), or None: all of it."""
    return _autocast_only(cfg.get('default_scope'), lambda name: bool(cfg.model.get(name)))


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
