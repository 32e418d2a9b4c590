"""The axial shift: AS-MLP's only token-mixing operation.

Channels of an NCHW tensor are cut into ``shift_size`` groups of ``ceil(C / shift_size)``
channels (the last group may be smaller, trailing groups may be empty) and group ``g`` is
moved along one spatial axis by ``s_g = (shift_size // 2 - g) * dilation`` pixels::

    out[:, c, h, :] = in[:, c, h + s_g, :]        (dim = H; the same along W)

so group 0 moves its content up (or left). Reads that fall outside the image come from the
padding mode. For ``dilation=1`` and zero padding this is exactly the published CUDA kernel.

These rules are written once, in :func:`shift_plan`: for every channel group, the input row
that each output row reads (-1: zero). All the rest carries out a plan:

- the kernels, :mod:`.cpu_kernel` on CPU and :mod:`.triton_kernel` on CUDA, take its tables
  and write the output in one pass;
- the PyTorch path (elsewhere, or with the kernels off) copies the plan's runs into the
  output: one slice per run of consecutive rows, the rows read as zero for all groups at
  once, the others by index;
- the exportable path (ONNX) joins the same runs with ``cat``, as exporters cannot follow
  writes into a made tensor;
- the adjoint (backward) carries out the transposed plan (:meth:`ShiftPlan.transpose`).

Unlike the published CPU path (pad, chunk, roll, concatenate, narrow: several passes over
the tensor), the output is written once, and autograd keeps nothing for backward.
"""
import functools
import itertools
import numbers
from typing import List, NamedTuple, Optional, Tuple

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


def source_row(position: int, length: int, padding: str) -> int:
    """The input row that ``position`` (inside ``[0, length)`` or not) stands for: -1 for
    a zero."""
    if 0 <= position < length:
        return position
    if padding == 'zero':
        return -1
    if padding == 'replicate':
        return min(max(position, 0), length - 1)
    if padding == 'circular':
        return position % length
    # 'reflect' (mirror without repeating the edge), periodic for any distance
    if length == 1:
        return 0
    period = 2 * (length - 1)
    position %= period
    return position if position < length else period - position


class Run(NamedTuple):
    """Output rows ``[start, stop)`` of a channel group that the PyTorch paths fill with
    one operation: ``kind`` 'zero', 'slice' (consecutive input rows) or 'index'."""
    start: int
    stop: int
    kind: str
    rows: Tuple[int, ...]  # the input row of each output row (-1: zero)


class Group(NamedTuple):
    start: int  # channels [start, end)
    end: int
    shift: int  # output row p reads input row p + shift wherever that is inside
    source: Tuple[int, ...]  # the input row of each output row (-1: zero)
    runs: Tuple[Run, ...]  # the same, cut into runs


class ShiftPlan(NamedTuple):
    """The shift of one tensor size, as every path carries it out (:func:`shift_plan`)."""
    length: int  # of the shifted axis
    groups: Tuple[Group, ...]
    #: rows that some group reads as zero: zeroed for all channels at once (two operations
    #: instead of two per group), before each group overwrites those it reads
    zero_bands: Tuple[Tuple[int, int], ...]
    #: (first channel, end channel, input rows, output rows): reads added after the gather
    #: (only transposed plans have them)
    added: Tuple[Tuple[int, int, Tuple[int, ...], Tuple[int, ...]], ...]
    #: the kernels' form: the end channel and shift of every group, and all groups' source
    #: rows in one table
    tables: Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]

    def transpose(self) -> 'ShiftPlan':
        """The adjoint as a plan: every input row gathers the gradient of one output row
        that reads it (the one of the plain shift where there is one, as the kernels
        expect), and the gradients of the rows that read it too (the borders that
        'replicate' and 'reflect' read twice) are added after, in order."""
        groups, added = [], []
        for group in self.groups:
            table = [-1] * self.length
            extra = []
            for p, q in enumerate(group.source):
                if q >= 0 and q == p + group.shift:
                    table[q] = p
            for p, q in enumerate(group.source):
                if q >= 0 and q != p + group.shift:
                    if table[q] < 0:
                        table[q] = p
                    else:
                        extra.append((q, p))
            groups.append((group.start, group.end, -group.shift, tuple(table)))
            if extra:
                added.append((group.start, group.end, *map(tuple, zip(*extra))))
        return _make_plan(self.length, groups, tuple(added))


def _runs(source: Tuple[int, ...]) -> Tuple[Run, ...]:
    """Cut a group's source rows into runs: zeros, slices of two or more consecutive input
    rows, and the rest (by index)."""
    runs: List[Run] = []
    start = 0
    while start < len(source):
        stop = start + 1
        if source[start] < 0:
            while stop < len(source) and source[stop] < 0:
                stop += 1
            kind = 'zero'
        else:
            while stop < len(source) and source[stop] == source[stop - 1] + 1:
                stop += 1
            kind = 'slice' if stop - start > 1 else 'index'
        if kind == 'index' and runs and runs[-1].kind == 'index':
            start = runs.pop().start
        runs.append(Run(start, stop, kind, source[start:stop]))
        start = stop
    return tuple(runs)


def _make_plan(length: int, groups, added=()) -> ShiftPlan:
    """A plan from ``(first channel, end channel, shift, source rows)`` of every group."""
    groups = tuple(Group(*g, _runs(g[3])) for g in groups)
    zeros = sorted({p for g in groups for p, q in enumerate(g.source) if q < 0})
    bands = [(p, p + 1) for p in zeros]
    for i in range(len(bands) - 1, 0, -1):  # merge neighbours
        if bands[i - 1][1] == bands[i][0]:
            bands[i - 1:i + 1] = [(bands[i - 1][0], bands[i][1])]
    tables = (tuple(g.end for g in groups), tuple(g.shift for g in groups),
              tuple(itertools.chain.from_iterable(g.source for g in groups)))
    return ShiftPlan(length, groups, tuple(bands), added, tables)


@functools.lru_cache(maxsize=1024)
def _cached_plan(channels: int, length: int, shift_size: int, dilation: int, padding: str,
                 transposed: bool) -> ShiftPlan:
    if transposed:
        return _cached_plan(channels, length, shift_size, dilation, padding, False).transpose()
    size = -(-channels // shift_size)  # ceil
    groups = []
    for g, start in enumerate(range(0, channels, size)):  # the non-empty groups
        shift = (shift_size // 2 - g) * dilation
        groups.append((start, min(start + size, channels), shift,
                       tuple(source_row(p + shift, length, padding) for p in range(length))))
    return _make_plan(length, groups)


@torch._dynamo.assume_constant_result  # under torch.compile: built, not traced
def shift_plan(channels: int, length: int, shift_size: int, dilation: int, padding: str,
               transposed: bool = False) -> ShiftPlan:
    """The shift of ``channels`` channels along an axis of ``length`` (built once per
    size, then cached); ``transposed``: its adjoint."""
    return _cached_plan(channels, length, shift_size, dilation, padding, transposed)


def _read(src: Tensor, dim: int, run: Run) -> Tensor:
    """The rows that ``run`` reads from ``src`` (for a slice, a view)."""
    if run.kind == 'slice':
        return src.narrow(dim, run.rows[0], len(run.rows))
    if run.kind == 'index':
        return src.index_select(dim, torch.tensor(run.rows, device=src.device))
    shape = list(src.shape)
    shape[dim] = len(run.rows)
    return src.new_zeros(shape)


def _copy_runs(x: Tensor, dim: int, plan: ShiftPlan) -> Tensor:
    """The PyTorch path: the plan's runs copied into the output."""
    out = torch.empty_like(x)
    for start, stop in plan.zero_bands:
        out.narrow(dim, start, stop - start).zero_()
    for group in plan.groups:
        src, dst = x[:, group.start:group.end], out[:, group.start:group.end]
        for run in group.runs:
            if run.kind != 'zero':
                dst.narrow(dim, run.start, run.stop - run.start).copy_(_read(src, dim, run))
    return out


def _join_runs(x: Tensor, dim: int, plan: ShiftPlan) -> Tensor:
    """The exportable path: the plan's runs joined with ``cat`` (no writes)."""
    pieces = []
    for group in plan.groups:
        src = x[:, group.start:group.end]
        parts = [_read(src, dim, run) for run in group.runs]
        pieces.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim))
    return torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]


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


def _kernel_gather(x: Tensor, dim: int, plan: ShiftPlan) -> Optional[Tensor]:
    """The plan by the device's kernel; ``None`` where the Triton kernel failed to run (it
    then turns itself off with a warning, and the caller takes the PyTorch path)."""
    if x.device.type == 'cpu':
        return torch.ops.asmlp_mm.axial_gather(x, dim, *plan.tables)
    return triton_kernel.try_axial_gather(x, dim, *plan.tables)


def _shift(x: Tensor, dim: int, shift_size: int, dilation: int, padding: str,
           adjoint: bool = False) -> Tensor:
    """The shift of ``x``, or with ``adjoint`` its transpose (``x`` is then a gradient)."""
    plan = shift_plan(int(x.shape[1]), int(x.shape[dim]), shift_size, dilation, padding,
                      adjoint)
    out = _kernel_gather(x, dim, plan) if _use_kernel(x) else None
    if out is None:
        out = _copy_runs(x, dim, plan)
    for start, end, rows, reads in plan.added:
        out[:, start:end].index_add_(dim, torch.tensor(rows, device=x.device),
                                     x[:, start:end].index_select(
                                         dim, torch.tensor(reads, device=x.device)))
    return out


class _ShiftFunction(torch.autograd.Function):
    """The shift (``adjoint=False``) or its adjoint, each the other's backward, so that
    double backward works too; in the form (``setup_context``, ``vmap``) that
    ``torch.func`` transforms (grad, jacrev, vmap) accept."""

    @staticmethod
    def forward(x, dim, shift_size, dilation, padding, adjoint):
        return _shift(x, dim, shift_size, dilation, padding, adjoint)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.args = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        dim, shift_size, dilation, padding, adjoint = ctx.args
        return (_function().apply(grad, dim, shift_size, dilation, padding, not adjoint),
                None, None, None, None, None)

    @staticmethod
    def vmap(info, in_dims, x, *args):
        # the mapped dimension joins the batch: the shift treats every image alike
        if in_dims[0] is None:
            return _function().apply(x, *args), None
        x = x.movedim(in_dims[0], 0)
        return _function().apply(x.flatten(0, 1), *args).unflatten(0, x.shape[:2]), 0


class _ShiftWithTangents(_ShiftFunction):
    """:class:`_ShiftFunction` with a jvp rule, for forward-mode AD (``jacfwd``,
    ``torch.autograd.forward_ad``): the shift is linear, so the tangent shifts as the input
    does. Dynamo refuses functions with a jvp rule, so traced code takes the other."""

    @staticmethod
    def jvp(ctx, tangent, *_):
        return _ShiftWithTangents.apply(tangent, *ctx.args)


def _function():
    return _ShiftFunction if is_traced() else _ShiftWithTangents


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
        # sizes as plain integers: traced ones would turn the plan into graph operations
        return _join_runs(x, dim, shift_plan(int(x.shape[1]), int(x.shape[dim]), shift_size,
                                             dilation, padding))
    traced = is_traced()  # a tracer or compiler: no torch.func transform, no jvp rule
    if x.requires_grad and torch.is_grad_enabled() or not traced and _transformed(x):
        return _function().apply(x, dim, shift_size, dilation, padding, False)
    return _shift(x, dim, shift_size, dilation, padding)


def _transformed(x: Tensor) -> bool:
    """Whether ``x`` is under a ``torch.func`` transform (vmap, jacfwd, ...) or carries a
    forward-mode tangent: then the shift goes through :class:`_ShiftWithTangents`, whose
    vmap and jvp rules handle it (the kernels take plain tensors only)."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return forward_ad._current_level >= 0 and forward_ad.unpack_dual(x).tangent is not None
