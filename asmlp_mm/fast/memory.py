"""Let glibc keep the memory a CPU run frees, instead of returning it to the system.

glibc hands every freed block above its mmap threshold (at most 32 MB, raised on the fly
as large blocks are freed) back to the system, and trims the top of its heap as it frees.
A training step on the CPU makes and frees many tensors of that size, and every new one is
page-faulted in again. With both thresholds raised, freed blocks are reused instead: AS-MLP-T
then trained 10% and 19% faster in two runs at batch 32 and 224x224 on 2 cores
(docs/benchmarks.md, section 4), and the process holds on to its peak memory.

:func:`keep_freed_memory` does this from within the process, as
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` does
from outside. ``tools/train.py`` and ``tools/test.py`` call it on machines without CUDA;
``ASMLP_MM_FAST=0`` turns it off with the other speed-ups.
"""
import ctypes
import os
import sys
from typing import Dict, Mapping, Optional

from .switch import ENV_SWITCH, ON

__all__ = ['ENV_SWITCH', 'allocator_settings', 'applied', 'keep_freed_memory']

#: environment variables that change what fresh memory costs (docs/benchmarks.md, section
#: 4): a preloaded allocator, glibc's malloc settings (the tunables and their older
#: ``MALLOC_*_`` spellings), jemalloc's and tcmalloc's, and PyTorch's huge-page switch
ALLOCATOR_VARIABLES = ('LD_PRELOAD', 'GLIBC_TUNABLES', 'MALLOC_', 'TCMALLOC_',
                       'THP_MEM_ALLOC_ENABLE')
# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest value mallopt takes (an int): blocks above 2 GiB are still mapped afresh
THRESHOLD = 2**31 - 1

_applied = []


def allocator_settings(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The set ones of :data:`ALLOCATOR_VARIABLES` in ``environ`` (default: this process's
    environment); a trailing ``_`` matches a prefix."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in sorted(environ.items()) if value and any(
        name.startswith(v) if v.endswith('_') else name == v for v in ALLOCATOR_VARIABLES)}


def applied() -> bool:
    """Whether :func:`keep_freed_memory` has raised the thresholds in this process."""
    return bool(_applied)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for the rest of the process (and the
    processes it forks, e.g. data loader workers). Returns whether they are raised now.

    Does nothing (returns False) where the C library is not glibc, where
    ``ASMLP_MM_FAST=0``, or where the environment already sets what fresh memory
    costs (any of :data:`ALLOCATOR_VARIABLES`: a preloaded allocator, glibc's settings,
    ...). Calling it again changes nothing.
    """
    if _applied:
        return True
    if not ON or not sys.platform.startswith('linux') \
            or allocator_settings():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt returns 1 where it took the setting (musl's returns 0: it has no such knobs)
    if mallopt(M_MMAP_THRESHOLD, THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, THRESHOLD) != 1:
        return False
    _applied.append(True)
    return True
