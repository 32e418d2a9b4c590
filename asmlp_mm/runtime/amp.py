"""Mixed precision on machines without CUDA.

mmengine's ``AmpOptimWrapper`` asserts a CUDA, NPU, MLU or MUSA device when it is built
(open-mmlab/mmpretrain#1556 reports the assertion), so a config that trains in mixed
precision, as the released recipes did, cannot start on CPU. There
:class:`AmpFallbackOptimWrapperConstructor` builds an :class:`AutocastOptimWrapper` in
bfloat16 instead. All of it can go when mmengine's ``AmpOptimWrapper`` runs on CPU.
"""
import inspect
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS


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
