"""The switches of the shift's kernels: the environment for the process, a ``with`` block.

``ASMLP_MM_FAST=0`` turns every speed-up of asmlp_mm off for the process: the shift's
kernels (and with them the CPU kernel's huge pages) here, the speed layer above. It is read
here, once, when ``asmlp_mm.ops`` is imported, so that every layer sees the same answer.
"""
import contextlib
import os
from typing import Callable, Iterator

#: ``ASMLP_MM_FAST=0`` turns every speed-up off for the process (``1`` or unset: on)
FAST_SWITCH = 'ASMLP_MM_FAST'


def read_fast_switch(value: str) -> bool:
    """Whether ``value`` of :data:`FAST_SWITCH` leaves the speed-ups on."""
    if value not in ('', '0', '1'):
        raise ValueError(f'{FAST_SWITCH} must be 0 (the speed-ups off) or 1 (on, the '
                         f'default), got {value!r}')
    return value != '0'


#: what the environment said when the package was imported
FAST = read_fast_switch(os.environ.get(FAST_SWITCH, ''))


class KernelSwitch:
    """Whether a kernel is to be used: on unless turned off (for the process by
    ``ASMLP_MM_FAST=0``, in a block by :meth:`use`), and only where ``available`` says that
    it can run.

    Args:
        available (callable): Returns whether the kernel can run here.
    """

    def __init__(self, available: Callable[[], bool]):
        self.available = available
        self.on = True

    def enabled(self) -> bool:
        return self.on and FAST and self.available()

    @contextlib.contextmanager
    def use(self, flag: bool) -> Iterator[None]:
        """Turn the kernel on or off inside the block (to compare it with the PyTorch
        path)."""
        before, self.on = self.on, flag
        try:
            yield
        finally:
            self.on = before
