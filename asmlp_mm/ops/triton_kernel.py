"""The GPU kernel of the axial shift, in Triton (``triton`` comes with PyTorch's CUDA builds).

One gather writes the shifted tensor in a single pass, from the same plan as the CPU
kernel (:func:`asmlp_mm.ops.axial_shift.shift_plan`: for every channel group and output
position, the input position it reads, -1 for zero). The PyTorch path copies one slice per
channel group and zeroes the borders, about seven kernel launches per shift, which cost
more than the copy itself on the small tensors of the late stages. The published code
needed CuPy for its CUDA kernel; this one needs nothing beyond PyTorch.

The kernel takes contiguous NCHW and channels-last tensors (others are made contiguous
first) of any dtype, and writes its output in the same memory format. It is compiled on
first use for each memory format, axis, dtype and block size (about a second each, cached
by Triton on disk). Where Triton is not installed, the shift runs its PyTorch path; so it
does with ``ASMLP_MM_TRITON=0``, and so it does, with a warning, where the kernel fails to
compile or launch (:func:`try_axial_gather`). Triton's interpreter (``TRITON_INTERPRET=1``)
runs the kernel on CPU tensors, slowly: that is how the tests check it on machines without
a GPU.
"""
import functools
import os
import warnings
from typing import Optional, Sequence

import torch

from .switch import KernelSwitch
from .torch_compat import OutOfMemoryError

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only PyTorch build
    triton = None

ENV_SWITCH = 'ASMLP_MM_TRITON'
#: the most elements of the inner block one program writes
MAX_BLOCK = 1024


def available() -> bool:
    """Whether Triton is installed and the kernel is not switched off by the environment."""
    return triton is not None and os.environ.get(ENV_SWITCH, '1') != '0'


_switch = KernelSwitch(available)
#: whether the axial shift should use the kernel for CUDA tensors now
enabled = _switch.enabled
#: ``with use_triton_kernel(False):`` turns the kernel off inside the block
use_triton_kernel = _switch.use


if triton is not None:

    @triton.jit
    def _axial_gather_kernel(x_ptr, out_ptr, index_ptr, size1, size3, inner, group, length,
                             shift_stride, CHANNELS_LAST: tl.constexpr,
                             SHIFT_AXIS: tl.constexpr, BLOCK: tl.constexpr):
        """One program writes ``BLOCK`` elements of one (i0, i1) row of the output, whose
        memory order is (i0, i1, i2, i3): (N, C, H, W), or (N, H, W, C) if channels-last.
        ``SHIFT_AXIS`` is the position of the shifted axis in that order."""
        row = tl.program_id(0).to(tl.int64)
        i1 = row % size1
        flat = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = flat < inner
        i2 = flat // size3
        i3 = flat % size3
        if CHANNELS_LAST:
            channel = i3
        else:
            channel = i1
        if SHIFT_AXIS == 1:
            position = i1
        elif SHIFT_AXIS == 2:
            position = i2
        else:
            position = i3
        source = tl.load(index_ptr + (channel // group) * length + position, mask=mask,
                         other=-1)
        offset = row * inner + flat
        value = tl.load(x_ptr + offset + (source - position) * shift_stride,
                        mask=mask & (source >= 0), other=0)
        tl.store(out_ptr + offset, value, mask=mask)


@functools.lru_cache(maxsize=256)
def _device_index(index: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.int32, device=device)


def axial_gather(x: torch.Tensor, dim: int, group_ends: Sequence[int],
                 shifts: Sequence[int], index: Sequence[int]) -> torch.Tensor:
    """The shift of ``x`` along ``dim`` (2 or 3) by a gather plan, in one kernel."""
    if x.dim() != 4 or dim not in (2, 3):
        raise ValueError(f'axial_gather expects an NCHW tensor and dim 2 or 3, got shape '
                         f'{tuple(x.shape)} and dim {dim}')
    n, c, h, w = x.shape
    length = x.shape[dim]
    if len(index) != len(group_ends) * length or len(shifts) != len(group_ends):
        raise ValueError('axial_gather: the plan does not fit the tensor')
    channels_last = not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    if not (channels_last or x.is_contiguous()):
        x = x.contiguous()
    if x.dtype == torch.bool:  # Triton loads bytes, not bits
        return axial_gather(x.view(torch.uint8), dim, group_ends, shifts, index).view(
            torch.bool)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    if channels_last:
        size1, size2, size3 = h, w, c
        shift_axis = 1 if dim == 2 else 2
    else:
        size1, size2, size3 = c, h, w
        shift_axis = dim
    inner = size2 * size3
    block = min(triton.next_power_of_2(inner), MAX_BLOCK)
    group = group_ends[0]  # every group but the last has this many channels
    table = _device_index(tuple(index), x.device)
    grid = (n * size1, triton.cdiv(inner, block))
    _axial_gather_kernel[grid](x, out, table, size1, size3, inner, group, length,
                               x.stride(dim), CHANNELS_LAST=channels_last,
                               SHIFT_AXIS=shift_axis, BLOCK=block)
    return out


def try_axial_gather(x: torch.Tensor, dim: int, group_ends: Sequence[int],
                     shifts: Sequence[int], index: Sequence[int]) -> Optional[torch.Tensor]:
    """:func:`axial_gather`, or ``None`` where Triton fails to compile or launch the kernel
    on this machine: the kernel then turns itself off for the rest of the process, with a
    warning, and the shift takes its PyTorch path (same results). Running out of memory is
    raised as it is."""
    try:
        return axial_gather(x, dim, group_ends, shifts, index)
    except OutOfMemoryError:
        raise
    except Exception as err:  # a compiler's or driver's error, of whatever type
        _switch.on = False
        warnings.warn(f'asmlp_mm: the Triton kernel of the axial shift failed '
                      f'({type(err).__name__}: {str(err).strip()[:500]}); the shift runs '
                      f'its PyTorch path instead (same results, more kernel launches). Set '
                      f'{ENV_SWITCH}=0 to skip the kernel.', RuntimeWarning)
        return None
