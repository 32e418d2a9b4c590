"""AS-MLP's speed layer: every CPU speed-up of the package, and the one switch for them.

:class:`~asmlp_mm.models.ASMLP` holds the plain modules; its ``forward`` hands the batch
to :func:`forward` (:mod:`.backbone`) where :func:`applies` says so. The speed-ups, none of
which changes a result beyond float rounding (the tests hold fast and plain outputs equal
to 1e-5):

- channels-last feature maps, and every 1x1 convolution as one matrix product, fused
  with the GELU after it; the channel MLP in blocks of rows (:mod:`.pointwise`);
- in-place GELUs and residual sums in inference, chunked CPU inference with the weights
  packed for oneDNN once per stage (:mod:`.backbone`);
- glibc's malloc keeping the memory a CPU run frees (:mod:`.memory`; ``tools/train.py``
  and ``tools/test.py`` turn it on where there is no CUDA).

The switch:

- ``ASMLP_MM_FAST=0`` in the environment turns all of the above off for the process, and
  the shift's compiled kernels with their huge pages (:mod:`asmlp_mm.ops.switch` reads it
  once, when :mod:`asmlp_mm` is imported; ``1`` or unset: on; anything else is an error).
- ``with asmlp_mm.fast.disabled():`` runs the plain modules within the block (e.g. for a
  double backward, which the fused training functions refuse, or to compare the paths).

Tracers, exporters and compilers (``torch.jit.trace``, ONNX export, ``torch.compile``)
always get the plain modules.
"""
from . import backbone, memory, pointwise
from .backbone import applies, forward, watched
from .memory import keep_freed_memory
from .switch import ENV_SWITCH, disabled, enabled

__all__ = ['ENV_SWITCH', 'applies', 'backbone', 'disabled', 'enabled', 'forward',
           'keep_freed_memory', 'memory', 'pointwise', 'watched']
