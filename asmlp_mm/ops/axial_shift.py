"""The axial shift: AS-MLP's only token-mixing operation.

Channels of an NCHW tensor are cut into ``shift_size`` groups of ``ceil(C / shift_size)``
channels (the last group may be smaller, trailing groups may be empty) and group ``g`` is
moved along one spatial axis by ``s_g = (shift_size // 2 - g) * dilation`` pixels::

    out[:, c, h, :] = in[:, c, h + s_g, :]        (dim = H; the same along W)

so group 0 moves its content up (or left). Reads that fall outside the image come from the
padding mode. For ``dilation=1`` and zero padding this is exactly the published CUDA kernel.

The output is written in one pass, instead of the published CPU path (pad, chunk, roll,
concatenate, narrow), which makes several full passes over the tensor. On CPU a compiled
kernel (:mod:`.cpu_kernel`) does the pass, on CUDA a Triton kernel (:mod:`.triton_kernel`),
both from the same gather plan; elsewhere, and where the kernels are off or cannot be
built, contiguous slices are copied straight into the output (one copy per group plus the
few border rows). Under autograd a custom function runs the exact adjoint in backward
(the opposite shift, plus the border rows folded back in for non-zero padding), so no
intermediate tensors are kept.
"""
import functools
import numbers
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import cpu_kernel, triton_kernel
from .torch_compat import is_traced

PADDING_MODES = ('zero', 'replicate', 'reflect', 'circular')


def is_int(value) -> bool:
    """Whether ``value`` is an integer (a Python or numpy one, not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_shift_args(shift_size: int, dilation: int, padding: str) -> None:
    """Raise ``ValueError`` for arguments the axial shift does not accept."""
    if not is_int(shift_size) or shift_size < 1:
        raise ValueError(f'shift_size must be a positive odd integer, got {shift_size!r}')
    if shift_size % 2 == 0:
        raise ValueError(f'shift_size must be odd so that the shifts are symmetric '
                         f'around zero, got {shift_size}')
    if not is_int(dilation) or dilation < 1:
        raise ValueError(f'dilation must be an integer >= 1, got {dilation!r}')
    if padding not in PADDING_MODES:
        raise ValueError(f'padding must be one of {PADDING_MODES}, got {padding!r}')


def group_shifts(channels: int, shift_size: int,
                 dilation: int = 1) -> List[Tuple[int, int, int]]:
    """``(first_channel, end_channel, shift)`` of every non-empty channel group."""
    group = -(-channels // shift_size)  # ceil
    half = shift_size // 2
    out = []
    for g in range(shift_size):
        start, end = g * group, min((g + 1) * group, channels)
        if start < end:
            out.append((start, end, (half - g) * dilation))
    return out


def border_source_index(length: int, positions: List[int], padding: str) -> List[int]:
    """Where out-of-range positions read from, for the non-zero padding modes."""
    if padding == 'replicate':
        return [min(max(p, 0), length - 1) for p in positions]
    if padding == 'circular':
        return [p % length for p in positions]
    # 'reflect' (mirror without repeating the edge), periodic for any distance
    if length == 1:
        return [0 for _ in positions]
    period = 2 * (length - 1)
    idx = [p % period for p in positions]
    return [i if i < length else period - i for i in idx]


def _split_rows(length: int, shift: int) -> Tuple[int, int]:
    """Output rows ``[lo, hi)`` that read inside the image for this shift."""
    lo = min(max(-shift, 0), length)
    hi = max(min(length - shift, length), lo)
    return lo, hi


@functools.lru_cache(maxsize=1024)
def gather_plan(channels: int, length: int, shift_size: int, dilation: int, padding: str,
                adjoint: bool = False) -> Tuple[Tuple[int, ...], Tuple[int, ...],
                                                Tuple[int, ...]]:
    """The shift as the CPU kernel takes it: the end channel and shift of every group, and
    for every group and output position the input position it reads (-1: zero).

    ``adjoint=True`` gives the transpose of a zero-padded shift, which is the opposite
    shift with zero padding (other padding modes have no such form)."""
    ends, shifts, index = [], [], []
    for _, end, shift in group_shifts(channels, shift_size, dilation):
        shift = -shift if adjoint else shift
        lo, hi = _split_rows(length, shift)
        border = border_source_index(length, [p + shift for p in range(length)], padding) \
            if padding != 'zero' else [-1] * length
        ends.append(end)
        shifts.append(shift)
        index.extend(p + shift if lo <= p < hi else border[p] for p in range(length))
    return tuple(ends), tuple(shifts), tuple(index)


def _use_kernel(x: Tensor) -> bool:
    """Whether a kernel takes the shift: the compiled one on CPU, the Triton one on CUDA."""
    if is_traced():  # first: dynamo refuses reads of .layout in an autograd.Function
        return False
    if x.layout != torch.strided or x.is_quantized or x.element_size() not in (1, 2, 4, 8):
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x):  # no storage of its own
        return False
    if x.device.type == 'cpu':
        return cpu_kernel.enabled()
    return x.device.type == 'cuda' and triton_kernel.enabled()


def _kernel_shift(x: Tensor, dim: int, shift_size: int, dilation: int, padding: str,
                  adjoint: bool = False) -> Optional[Tensor]:
    """The shift by the device's kernel; ``None`` where the Triton kernel failed to run
    (it then turns itself off with a warning, and the caller takes the PyTorch path)."""
    plan = gather_plan(x.shape[1], x.shape[dim], shift_size, dilation, padding, adjoint)
    if x.device.type == 'cpu':
        return torch.ops.asmlp_mm.axial_gather(x, dim, *plan)
    return triton_kernel.try_axial_gather(x, dim, *plan)


def _shift_forward(x: Tensor, dim: int, shift_size: int, dilation: int,
                   padding: str) -> Tensor:
    out = _kernel_shift(x, dim, shift_size, dilation, padding) if _use_kernel(x) else None
    if out is not None:
        return out
    out = torch.empty_like(x)
    length = x.shape[dim]
    groups = group_shifts(x.shape[1], shift_size, dilation)
    if padding == 'zero':
        # zero the bands that some group reads from outside, for all channels at once (2
        # ops instead of 2 per group); each group's copy then overwrites what it reads
        reach = min(max(abs(shift) for _, _, shift in groups), length)
        if reach > 0:
            out.narrow(dim, 0, reach).zero_()
            out.narrow(dim, length - reach, reach).zero_()
    for c0, c1, shift in groups:
        src = x[:, c0:c1]
        dst = out[:, c0:c1]
        lo, hi = _split_rows(length, shift)
        if hi > lo:
            dst.narrow(dim, lo, hi - lo).copy_(src.narrow(dim, lo + shift, hi - lo))
        if padding == 'zero' or (lo == 0 and hi == length):
            continue
        border = list(range(0, lo)) + list(range(hi, length))
        index = border_source_index(length, [p + shift for p in border], padding)
        rows = torch.tensor(index, dtype=torch.long, device=x.device)
        picked = src.index_select(dim, rows)
        if lo > 0:
            dst.narrow(dim, 0, lo).copy_(picked.narrow(dim, 0, lo))
        if hi < length:
            dst.narrow(dim, hi, length - hi).copy_(picked.narrow(dim, lo, length - hi))
    return out


def _shift_functional(x: Tensor, dim: int, shift_size: int, dilation: int,
                      padding: str) -> Tensor:
    """The same shift without writes into a pre-made tensor (slices, pads and
    concatenations only), for exporters that cannot follow such writes (ONNX). Sizes are
    taken as plain integers: traced sizes would turn the group arithmetic into graph ops."""
    length = int(x.shape[dim])
    pieces = []
    for c0, c1, shift in group_shifts(int(x.shape[1]), shift_size, dilation):
        src = x[:, c0:c1]
        lo, hi = _split_rows(length, shift)
        parts = []
        index = border_source_index(length, [p + shift for p in range(length)], padding)
        if lo > 0:
            parts.append(_border_rows(src, dim, index[:lo], padding))
        if hi > lo:
            parts.append(src.narrow(dim, lo + shift, hi - lo))
        if hi < length:
            parts.append(_border_rows(src, dim, index[hi:], padding))
        pieces.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim))
    return torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]


def _border_rows(src: Tensor, dim: int, index: List[int], padding: str) -> Tensor:
    if padding == 'zero':
        shape = list(src.shape)
        shape[dim] = len(index)
        return src.new_zeros(shape)
    rows = torch.tensor(index, dtype=torch.long, device=src.device)
    return src.index_select(dim, rows)


def _shift_adjoint(grad: Tensor, dim: int, shift_size: int, dilation: int,
                   padding: str) -> Tensor:
    """Transpose of :func:`_shift_forward`: the gradient w.r.t. its input."""
    if padding == 'zero' and _use_kernel(grad):
        out = _kernel_shift(grad, dim, shift_size, dilation, padding, adjoint=True)
        if out is not None:
            return out
    out = torch.zeros_like(grad) if padding != 'zero' else torch.empty_like(grad)
    length = grad.shape[dim]
    for c0, c1, shift in group_shifts(grad.shape[1], shift_size, dilation):
        g_out = grad[:, c0:c1]
        g_in = out[:, c0:c1]
        lo, hi = _split_rows(length, shift)
        # inside rows: in[h + shift] receives out[h]
        if hi > lo:
            g_in.narrow(dim, lo + shift, hi - lo).copy_(g_out.narrow(dim, lo, hi - lo))
        if padding == 'zero':
            # input rows nobody reads get no gradient
            if hi <= lo:
                g_in.zero_()
                continue
            if lo + shift > 0:
                g_in.narrow(dim, 0, lo + shift).zero_()
            if hi + shift < length:
                g_in.narrow(dim, hi + shift, length - hi - shift).zero_()
            continue
        border = list(range(0, lo)) + list(range(hi, length))
        if len(border) == 0:
            continue
        index = border_source_index(length, [p + shift for p in border], padding)
        rows = torch.tensor(index, dtype=torch.long, device=grad.device)
        picked = torch.cat([g_out.narrow(dim, 0, lo), g_out.narrow(dim, hi, length - hi)],
                           dim=dim)
        g_in.index_add_(dim, rows, picked)
    return out


def _vmapped(function, in_dims, x: Tensor, args) -> Tuple[Tensor, Optional[int]]:
    """``function`` under ``torch.func.vmap``: the mapped dimension of ``x`` joins its
    batch dimension, since the shift treats every image alike."""
    if in_dims[0] is None:
        return function.apply(x, *args), None
    x = x.movedim(in_dims[0], 0)
    return function.apply(x.flatten(0, 1), *args).unflatten(0, x.shape[:2]), 0


class _AxialShiftFunction(torch.autograd.Function):
    """The shift with its adjoint as backward; in the form (``setup_context``, ``vmap``)
    that ``torch.func`` transforms (grad, jacrev, vmap) accept."""

    @staticmethod
    def forward(x, dim, shift_size, dilation, padding):
        return _shift_forward(x, dim, shift_size, dilation, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.args = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        return _AxialShiftAdjoint.apply(grad, *ctx.args), None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, *args):
        return _vmapped(_AxialShiftFunction, in_dims, x, args)


class _AxialShiftAdjoint(torch.autograd.Function):
    """The adjoint as a function of its own, so that double backward works too."""

    @staticmethod
    def forward(grad, dim, shift_size, dilation, padding):
        return _shift_adjoint(grad, dim, shift_size, dilation, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.args = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        return _AxialShiftFunction.apply(grad, *ctx.args), None, None, None, None

    @staticmethod
    def vmap(info, in_dims, grad, *args):
        return _vmapped(_AxialShiftAdjoint, in_dims, grad, args)


class _ShiftWithTangents(_AxialShiftFunction):
    """:class:`_AxialShiftFunction` with a jvp rule, for forward-mode AD (``jacfwd``,
    ``torch.autograd.forward_ad``): the shift is linear, so the tangent shifts as the
    input does. Dynamo refuses functions with a jvp rule, so compiled code never gets
    this one (:func:`axial_shift` takes it only outside tracers)."""

    @staticmethod
    def backward(ctx, grad):
        return _AdjointWithTangents.apply(grad, *ctx.args), None, None, None, None

    @staticmethod
    def jvp(ctx, tangent, *_):
        return _ShiftWithTangents.apply(tangent, *ctx.args)

    @staticmethod
    def vmap(info, in_dims, x, *args):
        return _vmapped(_ShiftWithTangents, in_dims, x, args)


class _AdjointWithTangents(_AxialShiftAdjoint):
    """:class:`_AxialShiftAdjoint` with a jvp rule (see :class:`_ShiftWithTangents`)."""

    @staticmethod
    def backward(ctx, grad):
        return _ShiftWithTangents.apply(grad, *ctx.args), None, None, None, None

    @staticmethod
    def jvp(ctx, tangent, *_):
        return _AdjointWithTangents.apply(tangent, *ctx.args)

    @staticmethod
    def vmap(info, in_dims, grad, *args):
        return _vmapped(_AdjointWithTangents, in_dims, grad, args)


def axial_shift(x: Tensor, dim: int, shift_size: int, dilation: int = 1,
                padding: str = 'zero') -> Tensor:
    """Shift channel groups of an NCHW tensor along one spatial axis.

    Args:
        x (Tensor): Input of shape (N, C, H, W), any device and dtype.
        dim (int): The spatial axis to shift along: 2 (or -2) for H, 3 (or -1) for W.
        shift_size (int): Number of channel groups; odd and >= 1. Group ``g`` moves by
            ``(shift_size // 2 - g) * dilation`` pixels.
        dilation (int): Spacing between the shifts of neighbouring groups. Defaults to 1.
        padding (str): Where out-of-image reads come from: 'zero', 'replicate',
            'reflect' or 'circular'. Defaults to 'zero'.

    Returns:
        Tensor: A new tensor of the same shape, dtype and device.
    """
    check_shift_args(shift_size, dilation, padding)
    shift_size, dilation = int(shift_size), int(dilation)  # numpy integers too
    if x.dim() != 4:
        raise ValueError(f'axial_shift expects an NCHW tensor, got shape {tuple(x.shape)}')
    if not is_int(dim) or dim not in (2, 3, -1, -2):
        raise ValueError(f'dim must be 2 (H) or 3 (W) of an NCHW tensor, got {dim!r}')
    dim = int(dim) % 4
    if x.shape[1] == 0:  # no channel to shift (and no group to plan)
        return x.clone()
    if torch.onnx.is_in_onnx_export():
        return _shift_functional(x, dim, shift_size, dilation, padding)
    traced = is_traced()  # a tracer or compiler: no torch.func transform, no jvp rule
    if x.requires_grad and torch.is_grad_enabled() or not traced and _transformed(x):
        function = _AxialShiftFunction if traced else _ShiftWithTangents
        return function.apply(x, dim, shift_size, dilation, padding)
    return _shift_forward(x, dim, shift_size, dilation, padding)


def _transformed(x: Tensor) -> bool:
    """Whether ``x`` is under a ``torch.func`` transform (vmap, jacfwd, ...) or carries a
    forward-mode tangent: then the shift goes through :class:`_ShiftWithTangents`, whose
    vmap and jvp rules handle it (the kernels take plain tensors only)."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return forward_ad._current_level >= 0 and forward_ad.unpack_dual(x).tangent is not None
