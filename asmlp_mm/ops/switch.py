"""An on/off switch of a kernel, settable for the span of a ``with`` block."""
import contextlib
from typing import Callable, Iterator


class KernelSwitch:
    """Whether a kernel is to be used: on unless turned off, and only where ``available``
    says that it can run.

    Args:
        available (callable): Returns whether the kernel can run here.
    """

    def __init__(self, available: Callable[[], bool]):
        self.available = available
        self.on = True

    def enabled(self) -> bool:
        return self.on and self.available()

    @contextlib.contextmanager
    def use(self, flag: bool) -> Iterator[None]:
        """Turn the kernel on or off inside the block (to compare it with the PyTorch
        path)."""
        before, self.on = self.on, flag
        try:
            yield
        finally:
            self.on = before
