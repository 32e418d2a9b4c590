"""The compiled CPU kernel of the axial shift (``csrc/axial_shift.cpp``).

The kernel writes the shifted tensor in one parallel pass; the PyTorch path in
:mod:`asmlp_mm.ops.axial_shift` needs one operator call per channel group and border, which
dominates at the small spatial sizes of the late stages. ``torch.utils.cpp_extension``
builds it on first use (about 10 s, once per machine, source and torch version) into
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``);
later processes load the cached library. ``tools/install.sh`` builds it ahead.

Where it cannot be built (no C++ compiler) the shift warns once and runs the PyTorch path,
which gives the same results. ``ASMLP_MM_CPU_KERNEL=0`` turns the kernel off.

The kernel allocates outputs of 2 MiB and more at 2 MiB boundaries and asks Linux for
transparent huge pages for them (``madvise``): a fresh tensor is then page-faulted in 2 MiB
at a time instead of 4 KiB, which made the stage-1 shift of AS-MLP-T twice as fast as a
clone (docs/benchmarks.md). ``ASMLP_MM_HUGE_PAGES=0`` turns this off; :func:`huge_pages`
says whether it applies.
"""
import logging
import os
import re
import threading
import time
import warnings

import torch

from .switch import KernelSwitch

SOURCE = os.path.join(os.path.dirname(__file__), 'csrc', 'axial_shift.cpp')
ENV_SWITCH = 'ASMLP_MM_CPU_KERNEL'
#: read by the kernel (csrc/axial_shift.cpp) once, at its first output of 2 MiB or more
#: (or the first :func:`huge_pages` call), for the rest of the process
HUGE_PAGES_SWITCH = 'ASMLP_MM_HUGE_PAGES'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
# -fno-tree-loop-distribute-patterns keeps the copy loops as vector loops instead of
# memcpy calls (with which the kernel was 20-30% slower than a clone on stage-1 tensors
# here); -fopenmp makes at::parallel_for use torch's OpenMP threads (without it, it runs
# serially).
CFLAGS = ['-O3', '-fopenmp', '-fno-tree-loop-distribute-patterns']
LDFLAGS = ['-fopenmp']
# a build takes about 10 s; a build lock older than this was left by an interrupted one
STALE_LOCK_S = 600

_state = {'loaded': None}
# one build and load per process: threads that make their first shift at the same time
# would otherwise each build and load the library (torch aborts the process when a second
# copy registers the operators again) or find another's build half done
_load_lock = threading.Lock()


def _new_lock_in_child() -> None:
    """A process forked while a thread of its parent held the lock (building the kernel)
    gets a free one; otherwise its first shift would wait forever."""
    global _load_lock
    _load_lock = threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call; thread-safe)."""
    loaded = _state['loaded']
    if loaded is None:
        with _load_lock:
            if _state['loaded'] is None:
                _state['loaded'] = _load()
            loaded = _state['loaded']
    return loaded


_switch = KernelSwitch(available)
#: whether the axial shift should use the kernel for CPU tensors now
enabled = _switch.enabled
#: ``with use_cpu_kernel(False):`` turns the kernel off inside the block
use_cpu_kernel = _switch.use


def huge_pages(mode_file: str = THP_MODE_FILE) -> bool:
    """Whether the kernel's outputs of 2 MiB and more get transparent huge pages: the kernel
    is on, it read ``ASMLP_MM_HUGE_PAGES`` as other than ``0``, and the system's THP mode
    (``mode_file``) is ``always`` or ``madvise`` (with ``never``, or off Linux, the hint
    changes nothing)."""
    if not enabled() or not torch.ops.asmlp_mm.huge_pages_wanted():
        return False
    try:
        with open(mode_file) as f:
            mode = f.read()
    except OSError:
        return False
    return '[always]' in mode or '[madvise]' in mode


def library_name() -> str:
    """The extension's name: one build per torch version, as the C++ ABI may change."""
    return 'asmlp_mm_axial_shift_' + re.sub(r'\W', '_', torch.__version__)


def lock_is_a_file() -> bool:
    """Whether torch's build lock is the existence of a file (``FileBaton``, torch < 2.14),
    which an interrupted build leaves behind. torch >= 2.14 holds an OS lock on the file
    instead (``FileLock``): the file stays after every build, and removing it could let
    two builds run at once."""
    from torch.utils import cpp_extension
    return hasattr(cpp_extension, 'FileBaton') and not hasattr(cpp_extension, 'FileLock')


def clear_stale_lock(build_dir: str, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build lock that an interrupted build left behind (torch would wait on it
    forever); a lock younger than ``max_age_s`` belongs to a build that may be running."""
    lock = os.path.join(build_dir, 'lock')
    try:
        if time.time() - os.path.getmtime(lock) <= max_age_s:
            return False
        os.remove(lock)
    except OSError:  # no lock, or another process removed it first
        return False
    warnings.warn(f'asmlp_mm: removed the stale build lock {lock} of an interrupted build '
                  f'of the CPU kernel; building it again.', RuntimeWarning)
    return True


def build_directory() -> str:
    """The folder torch builds the kernel in: ``$TORCH_EXTENSIONS_DIR/<name>``, or by default
    one in a folder per Python and CUDA version of torch's cache (e.g.
    ``~/.cache/torch_extensions/py311_cu130/<name>``); made if missing, as torch does."""
    from torch.utils import cpp_extension
    try:
        return cpp_extension._get_build_directory(library_name(), verbose=False)
    except (AttributeError, TypeError):  # a torch without this private helper
        root = os.environ.get('TORCH_EXTENSIONS_DIR') or cpp_extension.get_default_build_root()
        return os.path.join(root, library_name())


def _load() -> bool:
    if os.environ.get(ENV_SWITCH, '1') == '0':
        return False
    try:
        # importing cpp_extension logs a warning about CUDA_HOME on CPU-only machines,
        # which does not concern a CPU kernel; torch 2.1's imports pkg_resources, which
        # setuptools >= 81 warns about
        cpp_logger = logging.getLogger('torch.utils.cpp_extension')
        level = cpp_logger.level
        cpp_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', 'pkg_resources is deprecated')
                from torch.utils.cpp_extension import load
        finally:
            cpp_logger.setLevel(level)
        if lock_is_a_file():
            clear_stale_lock(build_directory())
        load(name=library_name(), sources=[SOURCE], extra_cflags=CFLAGS,
             extra_ldflags=LDFLAGS, is_python_module=False, verbose=False)
        return hasattr(torch.ops.asmlp_mm, 'axial_gather')
    except Exception as err:  # no compiler, no write access to the cache, ...
        warnings.warn(f'asmlp_mm: could not build the CPU kernel of the axial shift '
                      f'({type(err).__name__}: {str(err).strip()[:500]}); the shift runs '
                      f'its PyTorch path instead (same results, slower). Set '
                      f'{ENV_SWITCH}=0 to skip the build.', RuntimeWarning)
        return False
