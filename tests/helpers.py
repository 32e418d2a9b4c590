"""Helpers of the tests: importing the tools and running them (train.py, test.py, the dist
scripts) in subprocesses, random model weights, this process's memory mappings, and the
skip markers of tests that need a newer torch or a package that a CI leg lacks. pytest
puts this folder on ``sys.path``: ``from helpers import run_tool``."""
import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

from asmlp_mm.ops.torch_compat import too_old_for

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')


def needs_newer_torch(feature: str):
    """Skip marker of a test of ``feature`` (a key of
    :data:`asmlp_mm.ops.torch_compat.NEEDS_NEWER_TORCH`) on a torch too old for it."""
    reason = too_old_for(feature)
    return pytest.mark.skipif(reason is not None, reason=reason or '')


def needs_packages(*names: str):
    """Skip marker of a test that needs these packages where one is missing: the torch 2.1
    leg of the CI (tools/ci/torch21.sh) has mmcv-lite, without mmdet and mmseg."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f'{", ".join(missing)} not installed')


def load_tool(path: str):
    """The module of the tool ``tools/PATH`` (e.g. 'analysis/get_flops.py'), imported from
    its file without running its main: tools import only the package, so no ``sys.path``
    entry is needed."""
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the autograd nodes of the speed layer's fused functions (asmlp_mm.fast.pointwise)
FUSED = {'_ChannelMLPBackward', '_LinearGELUBackward'}


def graph_nodes(tensor):
    """Names of the autograd nodes ``tensor`` was made by."""
    names, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo += [next_fn for next_fn, _ in node.next_functions]
    return names


def run_tool(*args, cwd, env=None, threads=None):
    """Run ``python *args`` in ``cwd``, assert that it succeeds, return its output.

    Args:
        *args: The script and its arguments.
        cwd: Working folder.
        env (dict, optional): Environment; defaults to this process's.
        threads (int, optional): ``OMP_NUM_THREADS`` when the environment sets none. One
            thread suits the tiny demo models: their convolutions gain little from two,
            and a second thread on a busy 2-core machine makes every step many times
            slower.

    Returns:
        str: stdout and stderr.
    """
    env = dict(env or os.environ)
    if threads is not None:
        env.setdefault('OMP_NUM_THREADS', str(threads))
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def free_port():
    """A TCP port on 127.0.0.1 that is free now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def randomize(model):
    """The model with every parameter drawn from N(0, 0.3), seed 1: non-trivial norm
    weights and biases (fresh norms are ones and zeros)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def vma_flags(address: int) -> list:
    """The ``VmFlags`` of the mapping of this process that holds ``address``."""
    with open('/proc/self/smaps') as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if '-' in head and not head.endswith(':'):
                start, end = (int(a, 16) for a in head.split('-'))
                inside = start <= address < end
            elif inside and head == 'VmFlags:':
                return line.split()[1:]
    raise AssertionError(f'no mapping holds {address:#x}')
