"""Run-time fixes for the pinned stack (mmengine 0.10.7 on torch >= 2.6, machines without
CUDA), applied when this package is imported.

``import asmlp_mm`` only registers the modules; the configs name this package in
``custom_imports``, so that every tool that runs them (this repository's, mmdet's, mmseg's
and mmpretrain's own ``train.py``/``test.py``, ``mim train``) gets the fixes, and this
repository's tools import it. Each fix, the upstream limitation it works around, and when
it can go:

- :func:`.checkpoints.patch_checkpoint_loading`: mmengine's ``CheckpointLoader`` reads
  files with torch >= 2.6's ``weights_only=True`` default and refuses its own training
  checkpoints (open-mmlab/mmengine#1655); goes with a mmengine release that fixes it.
- :func:`.checkpoints.use_atomic_local_writes`: mmengine writes checkpoints in place, so a
  killed save leaves a truncated file; goes when ``LocalBackend.put`` writes atomically.
- :func:`silence_pkg_resources_warning`: setuptools warns at every ``import
  pkg_resources`` (mmcv, mmengine's config bases, mmpretrain's tools); goes when the
  OpenMMLab packages stop importing it.
- :mod:`.amp` (``AmpFallbackOptimWrapperConstructor``, ``AutocastOptimWrapper``, registered
  here): mmengine's ``AmpOptimWrapper`` refuses to start without CUDA, NPU, MLU or MUSA;
  goes when it accepts CPU.
- :mod:`.distributed` (``CPUDistributedDataParallel``, registered here, and
  :func:`.distributed.adapt_to_device` for this repository's tools): mmengine launches
  'pytorch' runs on CUDA only and torch's ``SyncBatchNorm`` takes CUDA tensors only; goes
  when both run on CPU.
"""
import warnings

from .amp import (AmpFallbackOptimWrapperConstructor, AutocastOptimWrapper, autocast_inside,
                  cpu_autocast_modules, enable_amp)
from .checkpoints import AtomicLocalBackend, patch_checkpoint_loading, use_atomic_local_writes
from .distributed import CPUDistributedDataParallel, GlooSyncBatchNorm, adapt_to_device


def silence_pkg_resources_warning() -> None:
    """Hide setuptools' "pkg_resources is deprecated" warning. The stack needs setuptools
    < 82, which still has pkg_resources (mmcv's build and mmengine's ``mmdet::`` config
    bases import it, and so do mmpretrain's tools), and it warns at each such import: four
    to six warnings a run that no user can act on."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


def apply() -> None:
    """Apply the process-wide fixes (idempotent; importing this package calls it)."""
    patch_checkpoint_loading()
    use_atomic_local_writes()
    silence_pkg_resources_warning()


apply()

__all__ = [
    'AmpFallbackOptimWrapperConstructor', 'AutocastOptimWrapper', 'AtomicLocalBackend',
    'CPUDistributedDataParallel', 'GlooSyncBatchNorm', 'adapt_to_device', 'apply',
    'autocast_inside', 'cpu_autocast_modules', 'enable_amp', 'patch_checkpoint_loading',
    'silence_pkg_resources_warning', 'use_atomic_local_writes'
]
