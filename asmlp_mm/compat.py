"""Fixes for the pinned stack (mmengine 0.10.7 on torch >= 2.6, CPU-only machines) and for
older torch releases.

Importing :mod:`asmlp_mm` applies :func:`patch_checkpoint_loading` and registers the
classes below; :class:`~asmlp_mm.models.ASMLP` applies :func:`guard_group_norms`. Each item
says why it exists and when it can go.
"""
import os
import pickle
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules.batchnorm import _BatchNorm

from .ops.pointwise import is_channels_last, is_traced


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


def guard_group_norms(model: nn.Module) -> None:
    """Give every GroupNorm of ``model`` the hook above, on the torch versions that need it
    (:data:`GROUP_NORM_NEEDS_INPUT_GRAD`); elsewhere do nothing."""
    if GROUP_NORM_NEEDS_INPUT_GRAD:
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.register_forward_pre_hook(_group_norm_input_with_grad)


class CheckpointError(RuntimeError):
    """A file given as a checkpoint cannot be read as one."""


def _checkpoint_safe_globals():
    """Classes that mmengine's own checkpoints pickle, besides tensors and builtins.

    ``meta['message_hub']`` stores :class:`HistoryBuffer` objects holding numpy arrays, and
    the runtime info holds numpy scalars. They are allow-listed so that checkpoints are
    still loaded with ``weights_only=True`` (no arbitrary code runs while loading).
    """
    try:  # numpy >= 2 (also present as an alias in numpy 1.26)
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    safe = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    safe += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                         np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return safe


# What mmengine's training checkpoints pickle besides tensors: ``HistoryBuffer`` keeps its
# statistics methods as ``getattr(HistoryBuffer, 'min')``, which weights_only refuses.
MMENGINE_CHECKPOINT_GLOBALS = {
    'builtins.getattr', 'mmengine.logging.history_buffer.HistoryBuffer',
    'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
    'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar', 'numpy.ndarray',
    'numpy.dtype'
}


def load_local_checkpoint(filename, map_location=None):
    """Replacement of mmengine's ``load_from_local`` for torch >= 2.6.

    mmengine 0.10.7 calls ``torch.load(filename, map_location)``; torch 2.6 made
    ``weights_only=True`` the default, which rejects the objects in mmengine's training
    checkpoints, so ``--resume`` and ``load_from`` fail. This loader:

    1. loads with ``weights_only=True`` and numpy / HistoryBuffer allow-listed (enough for
       weights-only files such as converted or published checkpoints);
    2. otherwise, if every non-tensor global in the file is one that mmengine itself
       writes (``MMENGINE_CHECKPOINT_GLOBALS``), loads it as mmengine did before torch 2.6,
       with full unpickling: checkpoints are pickles, load only files you trust;
    3. otherwise raises :class:`CheckpointError` naming the unexpected globals, and turns
       unreadable files into the same clear error.

    Remove when mmengine handles ``weights_only`` itself (mmengine > 0.10.7).
    """
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first_error = err
    except Exception as err:  # torch raises several types for broken files
        raise _unreadable(filename, err) from err
    try:
        unknown = set(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
    except Exception as err:
        raise _unreadable(filename, err) from err
    unknown -= MMENGINE_CHECKPOINT_GLOBALS
    if unknown:
        raise CheckpointError(
            f'{filename!r} pickles objects that are not weights nor mmengine training state: '
            f'{sorted(unknown)}; refusing to unpickle them') from first_error
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as err:
        raise _unreadable(filename, err) from err


def _unreadable(filename, err):
    detail = str(err).splitlines()[0] if str(err) else ''
    return CheckpointError(f'cannot load {filename!r} as a PyTorch checkpoint: expected a file '
                           f'written by torch.save (e.g. by tools/train.py). '
                           f'{type(err).__name__}: {detail}')


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


class GlooSyncBatchNorm(_BatchNorm):
    """A SyncBatchNorm for CPU tensors (gloo process groups), with SyncBN's state dict.

    torch's SyncBatchNorm raises for CPU inputs, and DDP refuses any SyncBatchNorm
    subclass on CPU, so this is a plain batch norm whose training statistics are computed
    over all processes with a differentiable all-reduce of per-channel sums. It replaces
    ``nn.SyncBatchNorm`` layers in place (see :class:`CPUDistributedDataParallel`). Remove
    when torch supports CPU SyncBatchNorm.
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
        from torch.distributed.nn.functional import all_reduce
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = x.new_full((1, ), x.numel() / channels)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]),
                           group=group or dist.group.WORLD)
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
        return out


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
