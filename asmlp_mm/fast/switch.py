"""The one switch of the speed layer: the environment for the process (read once, by
:mod:`asmlp_mm.ops.switch`, which the shift's kernels follow too), and a ``with`` block."""
from contextlib import contextmanager

from ..ops.switch import FAST as ON
from ..ops.switch import FAST_SWITCH as ENV_SWITCH

__all__ = ['ENV_SWITCH', 'ON', 'disabled', 'enabled']

_off_blocks = []


def enabled() -> bool:
    """Whether the speed-ups apply now: on in the environment, outside :func:`disabled`."""
    return ON and not _off_blocks


@contextmanager
def disabled():
    """Within this block the plain modules run: no fusion, no in-place writes, no chunks
    (e.g. for a second backward through the same graph, which the fused functions
    refuse, or to compare the two paths)."""
    _off_blocks.append(True)
    try:
        yield
    finally:
        _off_blocks.pop()
