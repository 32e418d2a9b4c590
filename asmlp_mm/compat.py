"""Fixes for the pinned stack (mmengine 0.10.7 on torch >= 2.6, CPU-only machines).

Importing :mod:`asmlp_mm` applies :func:`patch_checkpoint_loading` and registers the
classes below; each item says why it exists and when it can go.
"""
import os
from contextlib import contextmanager

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner.checkpoint import CheckpointLoader


class CheckpointError(RuntimeError):
    """A file given as a checkpoint cannot be read as one."""


def _checkpoint_safe_globals():
    """Classes that mmengine's own checkpoints pickle, besides tensors and builtins.

    ``meta['message_hub']`` stores :class:`HistoryBuffer` objects holding numpy arrays, and
    the runtime info holds numpy scalars. They are allow-listed so that checkpoints are
    still loaded with ``weights_only=True`` (no arbitrary code runs while loading).
    """
    core = getattr(np, '_core', None) or np.core
    safe = [HistoryBuffer, np.ndarray, np.dtype, core.multiarray._reconstruct,
            core.multiarray.scalar]
    safe += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                         np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return safe


def load_local_checkpoint(filename, map_location=None):
    """Replacement of mmengine's ``load_from_local`` for torch >= 2.6.

    mmengine 0.10.7 calls ``torch.load(filename, map_location)``; torch 2.6 made
    ``weights_only=True`` the default, which rejects the HistoryBuffer and numpy objects in
    mmengine's checkpoints, so ``--resume`` and ``load_from`` fail. This loader keeps
    ``weights_only=True`` with those classes allow-listed, and turns unreadable files into
    one clear error. Remove when mmengine passes its own allow-list (mmengine > 0.10.7).
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for broken files
        raise CheckpointError(
            f'cannot load {filename!r} as a PyTorch checkpoint: expected a file written by '
            f'torch.save (e.g. by tools/train.py). {type(err).__name__}: '
            f'{str(err).splitlines()[0] if str(err) else ""}') from err


def patch_checkpoint_loading():
    """Route mmengine's local-file checkpoint scheme through :func:`load_local_checkpoint`.

    This covers ``load_from``, ``--resume``, ``init_cfg=dict(type='Pretrained')`` and
    ``load_checkpoint``, which all go through ``CheckpointLoader``.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed precision by ``torch.autocast`` without a loss scaler, on any device.

    mmengine's ``AmpOptimWrapper`` refuses to start without CUDA/NPU/MLU. bfloat16 has the
    range of float32, so it needs no loss scaling, and CPU autocast supports it: this
    wrapper makes ``tools/train.py --amp`` work on CPU. Remove when mmengine's wrapper
    accepts CPU.

    Args:
        dtype (str): Autocast dtype. Defaults to 'bfloat16'.
        **kwargs: Arguments of :class:`OptimWrapper`.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        device = next(model.parameters()).device.type
        with super().optim_context(model), \
                torch.autocast(device_type=device, dtype=self.cast_dtype):
            yield


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU (gloo) processes.

    The runner always passes ``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU
    modules. This wrapper drops it. Remove when mmengine stops passing device ids for CPU.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def enable_amp(cfg):
    """Turn on mixed precision in a config: fp16 AMP on CUDA, bf16 autocast elsewhere."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper',
                                                   'AutocastOptimWrapper'):
        raise ValueError(f'--amp supports OptimWrapper configs, got {wrapper["type"]}')
    if torch.cuda.is_available():
        wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
    else:
        wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')


def adapt_to_device(cfg):
    """Make a config's distributed settings work on a machine without CUDA.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` when it initializes a 'pytorch'
    launch, defaults to the nccl backend, and wraps the model with CUDA ``device_ids``.
    Without CUDA this initializes the gloo process group itself (the runner then skips its
    own initialization) and selects :class:`CPUDistributedDataParallel`.
    """
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return
    import torch.distributed as dist
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.launcher == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')
