"""The compiled CPU kernel of the axial shift against the PyTorch path.

tests/test_ops.py runs its reference tests on both paths; these cover what is particular to
the kernel: memory layouts, dtypes, threads, its own argument checks and the fallback."""
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from asmlp_mm.ops import PADDING_MODES, axial_shift, cpu_kernel
from helpers import needs_newer_torch, vma_flags


@pytest.fixture(autouse=True)
def kernel_built():
    assert cpu_kernel.available(), 'the CPU kernel of the axial shift was not built'


def test_paths_agree_on_layouts_and_dtypes():
    torch.manual_seed(0)
    x = torch.randn(3, 13, 9, 11)
    layouts = {
        'contiguous': x,
        'channels_last': x.contiguous(memory_format=torch.channels_last),
        'strided view': torch.randn(3, 9, 13, 11).transpose(1, 2),
        'sliced': torch.randn(3, 13, 12, 11)[:, :, 2:11],
    }
    for (name, t), dtype in itertools.product(layouts.items(), (
            torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8, torch.bool)):
        t = (t > 0) if dtype == torch.bool else (t * 10).to(dtype)
        for dim, mode, (shift_size, dilation) in itertools.product(
                (2, 3), PADDING_MODES, ((5, 1), (7, 2), (3, 4))):
            with cpu_kernel.use_cpu_kernel(True):
                fast = axial_shift(t, dim, shift_size, dilation, mode)
            with cpu_kernel.use_cpu_kernel(False):
                slow = axial_shift(t, dim, shift_size, dilation, mode)
            assert torch.equal(fast, slow), (name, dtype, dim, mode, shift_size, dilation)
            assert fast.dtype == t.dtype
            channels_last = name == 'channels_last'
            assert fast.is_contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize('channels_last', [True, False])
def test_every_run_length(channels_last):
    """The kernel moves runs of bytes in overlapping fixed-size blocks: runs of 1 to 200
    bytes (one group's channels of a pixel in channels-last, one line in NCHW), at every
    alignment, against the PyTorch path."""
    torch.manual_seed(0)
    for channels in range(1, 160, 9):  # groups of 1 to 53 channels
        for dtype in (torch.uint8, torch.float32):
            width = 5 if channels_last else 1 + channels
            x = (torch.randn(2, channels, 3, width) * 10).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for dim, mode in itertools.product((2, 3), ('zero', 'reflect')):
                with cpu_kernel.use_cpu_kernel(True):
                    fast = axial_shift(x, dim, 3, 1, mode)
                with cpu_kernel.use_cpu_kernel(False):
                    slow = axial_shift(x, dim, 3, 1, mode)
                assert torch.equal(fast, slow), (channels, dtype, dim, mode)


def test_kernel_result_does_not_depend_on_threads():
    # big enough for many parallel tasks (4-16 KB each)
    x = torch.randn(4, 40, 33, 35)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append([axial_shift(x, d, 5, 1, m) for d in (2, 3) for m in PADDING_MODES])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    with cpu_kernel.use_cpu_kernel(False):
        for a, (d, m) in zip(outs[0], itertools.product((2, 3), PADDING_MODES)):
            assert torch.equal(a, axial_shift(x, d, 5, 1, m))


def test_kernel_checks_its_plan():
    op = torch.ops.asmlp_mm.axial_gather
    x = torch.randn(1, 4, 3, 3)
    good = ([2, 4], [1, -1], [1, 2, -1, -1, 0, 1])
    assert op(x, 3, *good).shape == x.shape
    with pytest.raises(RuntimeError, match='must end at 4'):
        op(x, 3, [2, 3], good[1], good[2])
    with pytest.raises(RuntimeError, match='6 entries'):
        op(x, 3, good[0], good[1], good[2][:5])
    with pytest.raises(RuntimeError, match='index table entry'):
        op(x, 3, good[0], good[1], [1, 2, -1, -1, 2, 1])
    with pytest.raises(RuntimeError, match='dim must be 2'):
        op(x, 1, *good)


def test_build_failure_warns_and_falls_back(monkeypatch):
    x = torch.randn(2, 6, 5, 4)
    ref = axial_shift(x, 3, 5, 1, 'reflect')
    monkeypatch.setitem(cpu_kernel._state, 'loaded', None)
    monkeypatch.setattr(cpu_kernel, 'SOURCE', '/nonexistent/axial_shift.cpp')
    with pytest.warns(RuntimeWarning, match='PyTorch path'):
        assert not cpu_kernel.available()
    torch.testing.assert_close(axial_shift(x, 3, 5, 1, 'reflect'), ref)
    # the switch skips the build silently
    monkeypatch.setitem(cpu_kernel._state, 'loaded', None)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, '0')
    assert not cpu_kernel.available()


def test_stale_build_lock_is_removed(tmp_path):
    lock = tmp_path / 'lock'
    lock.write_text('')
    assert not cpu_kernel.clear_stale_lock(str(tmp_path))  # a build may be running
    assert lock.exists()
    old = time.time() - cpu_kernel.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match='stale build lock'):
        assert cpu_kernel.clear_stale_lock(str(tmp_path))
    assert not lock.exists()
    assert not cpu_kernel.clear_stale_lock(str(tmp_path))  # nothing left to remove


@pytest.mark.parametrize('lock_is_a_file', [True, False])
def test_stale_lock_is_looked_for_where_torch_builds(tmp_path, monkeypatch, lock_is_a_file):
    """torch builds in ``$TORCH_EXTENSIONS_DIR/<name>`` (by default in a folder per Python
    and CUDA version of its cache): the stale lock of an interrupted build is there. Where
    torch locks the file instead (>= 2.14), it stays after every build and is left alone."""
    import warnings
    from torch.utils import cpp_extension
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.setattr(cpu_kernel, 'lock_is_a_file', lambda: lock_is_a_file)
    lock = tmp_path / cpu_kernel.library_name() / 'lock'
    lock.parent.mkdir()
    lock.write_text('')
    old = time.time() - cpu_kernel.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    seen = []
    # the kernel is loaded in this process already: only whether the lock is gone when
    # torch's load runs matters here
    monkeypatch.setattr(cpp_extension, 'load', lambda **kwargs: seen.append(lock.exists()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert cpu_kernel._load()
    assert seen == [not lock_is_a_file]
    assert any('stale build lock' in str(w.message) for w in caught) == lock_is_a_file


def test_which_torch_locks_by_a_file():
    from torch.utils import cpp_extension
    locks_the_file = 'FileLock' in vars(cpp_extension)  # torch >= 2.14
    assert cpu_kernel.lock_is_a_file() == (not locks_the_file)
    assert cpu_kernel.lock_is_a_file() == (torch.__version__ < '2.14')


FIRST_SHIFT_IN_THREADS = textwrap.dedent('''
    import threading
    import torch
    from asmlp_mm.ops import axial_shift, cpu_kernel

    loads, load = [], cpu_kernel._load
    cpu_kernel._load = lambda: loads.append(1) or load()
    x = torch.randn(2, 10, 7, 9)
    barrier = threading.Barrier(6)
    outs = [None] * 6

    def first_shift(i):
        barrier.wait()
        outs[i] = axial_shift(x, 2 + i % 2, 5, 1, 'reflect')

    threads = [threading.Thread(target=first_shift, args=(i, )) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cpu_kernel.available() and loads == [1], loads
    with cpu_kernel.use_cpu_kernel(False):
        refs = [axial_shift(x, 2 + i % 2, 5, 1, 'reflect') for i in range(6)]
    assert all(torch.equal(o, r) for o, r in zip(outs, refs))
    print('shifted')
''')


def test_first_shifts_in_threads_build_and_load_once(tmp_path):
    """Threads that make their first shift at the same time in a process without the built
    kernel: one builds and loads it, the others wait for it (without the lock they each
    loaded it: torch then aborted the process, or some warned that it could not be built).
    The one build of these tests, into an empty extension folder."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / 'extensions'))
    env.pop(cpu_kernel.ENV_SWITCH, None)
    result = subprocess.run([sys.executable, '-c', FIRST_SHIFT_IN_THREADS], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['shifted']
    assert 'Warning' not in result.stderr and 'could not build' not in result.stderr, \
        result.stderr[-3000:]


def test_thp_mode_and_switch(tmp_path):
    """huge_pages() follows the system's THP mode and what the kernel read of
    ASMLP_MM_HUGE_PAGES when it started (test_huge_pages_can_be_turned_off sets it)."""
    mode = tmp_path / 'enabled'
    wanted = torch.ops.asmlp_mm.huge_pages_wanted()
    for text, expected in (('always [madvise] never\n', True), ('[always] madvise never\n', True),
                           ('always madvise [never]\n', False)):
        mode.write_text(text)
        assert cpu_kernel.huge_pages(str(mode)) is (expected and wanted), text
    assert cpu_kernel.huge_pages(str(tmp_path / 'missing')) is False
    mode.write_text('[always] madvise never\n')
    with cpu_kernel.use_cpu_kernel(False):
        assert cpu_kernel.huge_pages(str(mode)) is False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/smaps')
def test_large_outputs_ask_for_huge_pages():
    """Outputs of 2 MiB and more lie in memory marked for huge pages ('hg'). Forward and
    backward both. (Smaller ones: test_small_outputs_are_ordinary_memory.)"""
    if not cpu_kernel.huge_pages():
        pytest.skip('transparent huge pages are off here (or ASMLP_MM_HUGE_PAGES=0)')
    x = torch.randn(2, 64, 96, 96, requires_grad=True)  # 4.7 MB
    for dim in (2, 3):
        out = axial_shift(x, dim, 5)
        with cpu_kernel.use_cpu_kernel(False):
            assert torch.equal(out, axial_shift(x.detach(), dim, 5))
        assert 'hg' in vma_flags(out.data_ptr()) and out.data_ptr() % 64 == 0
        x.grad = None
        out.backward(torch.ones_like(out))
        assert 'hg' in vma_flags(x.grad.data_ptr())
    # outputs of the kernel stay ordinary tensors: resizable and shareable between
    # processes (each on a tensor of its own; copy-on-write clones: the test below)
    x = x.detach()
    expected = axial_shift(x, 2, 5)
    shared = axial_shift(x, 2, 5).share_memory_()
    assert shared.is_shared() and torch.equal(shared, expected)
    grown = axial_shift(x, 2, 5).resize_(3, 64, 96, 96)
    assert torch.equal(grown[:2], expected)
    grown.zero_()
    assert int(grown.count_nonzero()) == 0


@needs_newer_torch('copy-on-write clones')
def test_large_outputs_have_copy_on_write_clones():
    """(torch 2.14 fails a write to a resized copy-on-write tensor of its own allocator
    too: the clone is of a tensor of its own.)"""
    if not cpu_kernel.huge_pages():
        pytest.skip('transparent huge pages are off here (or ASMLP_MM_HUGE_PAGES=0)')
    x = torch.randn(2, 64, 96, 96)
    expected = axial_shift(x, 2, 5)
    out = axial_shift(x, 2, 5)
    copy = torch._lazy_clone(out)
    copy.add_(1)
    assert torch.equal(copy, expected + 1) and torch.equal(out, expected)


SMALL_OUTPUT = textwrap.dedent('''
    import torch
    from asmlp_mm.ops import axial_shift, cpu_kernel
    from helpers import vma_flags
    small = axial_shift(torch.randn(2, 16, 32, 32), 2, 5)  # 128 KB
    print(cpu_kernel.enabled(), cpu_kernel.huge_pages(), 'hg' in vma_flags(small.data_ptr()))
''')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/smaps')
def test_small_outputs_are_ordinary_memory():
    """Outputs under 2 MiB come from PyTorch's allocator, in memory not marked for huge
    pages. Checked in a new process: a huge-page block that glibc placed in its heap (its
    mmap threshold grows after frees) keeps the mark once freed, as the blocks of PyTorch's
    own THP_MEM_ALLOC_ENABLE do, and small tensors of the pytest process may then reuse it
    (seen once in a full run)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, '-c', SMALL_OUTPUT], env=env, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    enabled, huge_pages, marked = result.stdout.split()
    if huge_pages != 'True':
        pytest.skip('transparent huge pages are off here (or ASMLP_MM_HUGE_PAGES=0)')
    assert (enabled, marked) == ('True', 'False')


HUGE_PAGES_OFF = textwrap.dedent('''
    import os
    import torch
    from asmlp_mm.ops import axial_shift, cpu_kernel
    from helpers import vma_flags
    x = torch.randn(2, 64, 96, 96)
    out = axial_shift(x, 3, 5)
    os.environ['ASMLP_MM_HUGE_PAGES'] = '1'  # read once, at the start: changes nothing
    with cpu_kernel.use_cpu_kernel(False):
        assert torch.equal(out, axial_shift(x, 3, 5))
    print(cpu_kernel.enabled(), cpu_kernel.huge_pages(), 'hg' in vma_flags(out.data_ptr()))
''')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/smaps')
def test_huge_pages_can_be_turned_off():
    env = dict(os.environ, ASMLP_MM_HUGE_PAGES='0', PYTHONPATH=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, '-c', HUGE_PAGES_OFF], env=env, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['True', 'False', 'False']


PROFILED_MEMORY = textwrap.dedent('''
    import gc, json, torch
    from asmlp_mm.ops import axial_shift

    def memory_events(fn):
        gc.collect()
        gc.disable()
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                        profile_memory=True) as prof:
                fn()
        finally:
            gc.enable()
        return [e.nbytes() for e in prof.profiler.kineto_results.events()
                if e.name() == '[memory]']

    x = torch.randn(2, 64, 96, 96)
    events = {'made and freed': memory_events(lambda: axial_shift(x, 3, 5))}
    for name, make in (('kernel output made before', lambda: axial_shift(x, 3, 5)),
                       ('clone made before', x.clone)):
        made_before = [make()]
        events[name] = memory_events(made_before.clear)
    print(json.dumps(events))
''')


def test_profiler_sees_the_kernel_outputs_as_the_default_allocators():
    """The kernel's large outputs come from its own allocator, which reports to the default
    CPU allocator's reporter (the benchmark's peak memory relies on it): an output made and
    freed while profiling is an allocation and a free; one made before and freed while
    profiling is nothing, as for a tensor of the default allocator. It runs in a fresh
    process: in the suite's process a CI run once saw, inside the window, a free of 2359296
    bytes that this test never made (the reporter remembers blocks allocated while an earlier
    test profiled and freed after it)."""
    result = subprocess.run([sys.executable, '-c', PROFILED_MEMORY], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    nbytes = 2 * 64 * 96 * 96 * 4
    assert json.loads(result.stdout.splitlines()[-1]) == {
        'made and freed': [nbytes, -nbytes], 'kernel output made before': [],
        'clone made before': []}


FORK_WHILE_LOADING = textwrap.dedent('''
    import os, signal, torch
    from asmlp_mm.ops import axial_shift, cpu_kernel
    cpu_kernel._load_lock.acquire()  # as a thread that is building or loading the kernel
    pid = os.fork()
    if pid == 0:
        signal.alarm(120)
        axial_shift(torch.randn(1, 5, 4, 4), 2, 5)
        os._exit(0 if cpu_kernel.available() else 3)
    cpu_kernel._load_lock.release()
    print(os.waitpid(pid, 0)[1])
''')


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='no fork')
def test_a_process_forked_while_the_kernel_loads_can_load_it():
    """The load lock was inherited held by the child, whose first shift then waited
    forever."""
    result = subprocess.run([sys.executable, '-c', FORK_WHILE_LOADING], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['0'], result.stdout
