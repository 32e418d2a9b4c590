"""1x1 convolutions of AS-MLP's fast path, on channels-last tensors.

On a channels-last (N, C, H, W) tensor a 1x1 convolution is one matrix product over the
N*H*W rows of its NHWC view, with the (out, in, 1, 1) weight viewed as (out, in): no layout
conversions, and the matrix library's kernels (in CPU inference oneDNN's, which adds the
bias as it writes the output). On top of that, the GELU that follows most of AS-MLP's
projections is fused with them where it saves passes over memory:

- :func:`conv_gelu`: ``gelu(conv(x))``. In inference one oneDNN matrix product applies the
  GELU as it writes its output; in training (train mode, recording a graph) the GELU's
  gradient is written into the saved pre-activation instead of a new tensor.
- :func:`channel_mlp`: ``conv2(gelu(conv1(x)))``. The hidden activation (4x the input)
  is made a block of rows at a time, each block small enough to stay in the CPU caches.
  In training it is not kept for backward: backward makes it again from the saved
  pre-activation, block by block. Fewer and smaller fresh tensors (each fresh page costs a
  page fault), and a smaller peak memory. In inference each block is two oneDNN products,
  on inputs of more rows than a block (large images, e.g. for detection).

The training functions overwrite what they saved as their backward runs, so they allow
one backward per forward (a second one raises an error), and their backward is not
differentiable (a double backward through it, after ``create_graph=True``, raises an error
that names :func:`asmlp_mm.fast.disabled`); models in eval mode, e.g. in gradient-based
analysis tools, take the plain modules. Everything here computes what the plain modules
compute (the same ops; only the order in which a few weight gradients are summed differs).
In an autocast region they compute in autocast's dtype, as ``F.linear`` does there (in
inference the GELU then acts before the rounding to that dtype). Inside
:func:`asmlp_mm.fast.disabled` (or with ``ASMLP_MM_FAST=0``) the plain modules run.

The functions take the modules for their parameters and do not call them: forward hooks on
them do not run. :mod:`.backbone` uses them only on modules that no hook watches, and never
under a tracer, exporter or compiler.
"""
import functools
import threading
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.torch_compat import get_autocast_dtype, is_autocast_enabled, is_channels_last
from .switch import enabled

#: Rows (pixels) of a block that stays in the CPU caches: 4096 rows of a 4x-wide hidden
#: activation of 96 channels are 6 MB. Used by :func:`channel_mlp` and by the chunked
#: inference of :mod:`.backbone`.
CACHE_ROWS = 4096


def may_overwrite(x: torch.Tensor) -> bool:
    """Whether an op may write its result into ``x`` (a tensor the caller has just made
    and no hook has seen): nothing records ``x`` for backward."""
    return not (x.requires_grad and torch.is_grad_enabled())


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; a GELU writes into ``x`` where :func:`may_overwrite` allows."""
    if type(act) is nn.GELU and may_overwrite(x):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


#: Activations whose backward needs their input but not their output (when they do not
#: act in place): their output may be overwritten while a graph is recorded. Not ReLU,
#: Sigmoid, Tanh, ..., whose backward reads their output.
KEEP_INPUT_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Hardswish, nn.PReLU)


def add_into(fresh: torch.Tensor, other: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``fresh + other``, written into ``fresh`` (the output of ``act``, which the caller
    has just made and no hook has seen) where no backward needs it: :func:`may_overwrite`,
    or an ``act`` of :data:`KEEP_INPUT_ACTIVATIONS`."""
    if may_overwrite(fresh) or (type(act) in KEEP_INPUT_ACTIVATIONS
                                and not getattr(act, 'inplace', False)):
        return fresh.add_(other)
    return fresh + other


def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.reshape(conv.weight.shape[0], -1)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """The (N*H*W, C) rows of a channels-last tensor (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N*H*W, C') rows back to a channels-last (N, C', H, W) tensor (a view)."""
    n, _, h, w = like.shape
    # the channel count given: a -1 would be ambiguous for an empty batch
    return rows.view(n, h, w, rows.shape[-1]).permute(0, 3, 1, 2)


def _oneDNN_op(name: str):
    """``torch.ops.mkldnn.<name>``, or ``None`` where this PyTorch build has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


#: oneDNN's linear with an activation applied as it writes its output (the op behind
#: inductor's CPU fusions)
LINEAR_POINTWISE = _oneDNN_op('_linear_pointwise')
#: oneDNN's packing of a linear weight into its blocked layout
REORDER_WEIGHT = (_oneDNN_op('_reorder_linear_weight') if LINEAR_POINTWISE is not None
                  else None)
_PACKED = threading.local()


@functools.lru_cache(maxsize=None)
def onednn_runs(dtype: torch.dtype, packed: bool = False) -> bool:
    """Whether this CPU's oneDNN runs the products above in ``dtype`` (with ``packed``,
    on a weight packed by :data:`REORDER_WEIGHT`), asked once per process by one tiny
    product. PyTorch's own flag checks read the CPU's flags, but what oneDNN does also
    depends on its ISA limit (``ONEDNN_MAX_CPU_ISA``): e.g. without AVX-512 it has no
    bfloat16 inner product. Where it cannot, the plain PyTorch path runs."""
    # the ops themselves, not the module's names for them (which tests may wrap)
    linear, reorder = _oneDNN_op('_linear_pointwise'), _oneDNN_op('_reorder_linear_weight')
    if linear is None or (packed and reorder is None):
        return False
    x, weight = torch.ones(2, 8, dtype=dtype), torch.ones(8, 8, dtype=dtype)
    try:
        with torch.autocast('cpu', enabled=False):
            if packed:
                weight = reorder(weight, 2)
            out = linear(x, weight, torch.zeros(8, dtype=dtype), 'gelu', [], 'none')
    except RuntimeError:
        return False
    return torch.allclose(out.float(), torch.full((2, 8), 8.))  # gelu(8) = 8


@contextmanager
def packed_weights(enabled: bool = True):
    """Within this block, the oneDNN products of CPU inference pack each weight into
    oneDNN's blocked layout on first use and reuse it, instead of packing it on every call
    (5-27% per product on AS-MLP-T's shapes here). For loops that run the same layers on
    several chunks of a batch, as :class:`~asmlp_mm.models.ASMLP`'s chunked inference
    does. The weights must not change inside the block; the packed copies (as much memory
    as the weights used) are dropped at its end. A block opened inside an enabled one
    shares its packed weights; ``enabled=False`` opens a block without packing."""
    stack = getattr(_PACKED, 'stack', None)
    if stack is None:
        stack = _PACKED.stack = []
    cache = None
    if enabled and REORDER_WEIGHT is not None:
        cache = stack[-1] if stack and stack[-1] is not None else {}
    stack.append(cache)
    try:
        yield
    finally:
        stack.pop()


def compute_dtype(x: torch.Tensor, conv: nn.Conv2d) -> Optional[torch.dtype]:
    """The dtype a 1x1 convolution of ``x`` runs in: autocast's in an autocast region
    (as ``F.linear`` there), else that of ``x`` and the weight; ``None`` where these
    differ."""
    if is_autocast_enabled(x.device.type):
        return get_autocast_dtype(x.device.type)
    return x.dtype if conv.weight.dtype == x.dtype else None


def _cpu_fast(x: torch.Tensor, *convs: nn.Conv2d) -> bool:
    """Whether the CPU fast paths apply: channels-last float32 or bfloat16 CPU input (or
    autocast to one of them), the speed-ups :func:`~.switch.enabled`."""
    return (enabled() and x.device.type == 'cpu' and is_channels_last(x)
            and all(compute_dtype(x, c) in (torch.float32, torch.bfloat16) for c in convs))


def _fusable(x: torch.Tensor, act: nn.Module, *convs: nn.Conv2d) -> bool:
    """Whether the fused CPU paths apply: a GELU and :func:`_cpu_fast`."""
    return type(act) is nn.GELU and _cpu_fast(x, *convs)


def _operands(conv: nn.Conv2d, dtype: torch.dtype):
    """The weight as an (out, in) matrix and the bias, in ``dtype`` (differentiable casts,
    as autocast makes them)."""
    bias = conv.bias.to(dtype) if conv.bias is not None else None
    return _matrix(conv).to(dtype), bias


def _records_grad(x: torch.Tensor, *convs: nn.Conv2d) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for c in convs for p in c.parameters()))


def _fused_training(x: torch.Tensor, *convs: nn.Conv2d) -> bool:
    """Whether the fused autograd functions run: in training mode (one backward per
    forward, as a training step does) with a graph being recorded. Gradients of a model in
    eval mode (analysis tools, which may run backward twice) take the plain modules."""
    return all(c.training for c in convs) and _records_grad(x, *convs)


def _inference_operands(conv: nn.Conv2d, dtype: torch.dtype, rows: int):
    """:func:`_operands`, the weight packed once per :func:`packed_weights` block."""
    stack = getattr(_PACKED, 'stack', None)
    cache = stack[-1] if stack else None
    if cache is None or not onednn_runs(dtype, packed=True):
        return _operands(conv, dtype)
    key = (id(conv), dtype)
    entry = cache.get(key)
    if entry is None or entry[0] is not conv.weight or entry[1] is not conv.bias:
        weight, bias = _operands(conv, dtype)
        entry = cache[key] = (conv.weight, conv.bias, REORDER_WEIGHT(weight, rows), bias)
    return entry[2], entry[3]


def _oneDNN_rows(conv: nn.Conv2d, rows: torch.Tensor, dtype: torch.dtype,
                 attr: str = 'none', algorithm: str = '') -> torch.Tensor:
    """``conv`` applied to ``(..., C)`` rows as one oneDNN product in ``dtype``, the bias
    and the activation ``attr`` applied as it writes its output."""
    weight, bias = _inference_operands(conv, dtype, rows.numel() // rows.shape[-1])
    with torch.autocast('cpu', enabled=False):
        return LINEAR_POINTWISE(rows.to(dtype), weight, bias, attr, [], algorithm)


def _oneDNN_inference(conv: nn.Conv2d, x: torch.Tensor, attr: str = 'none',
                      algorithm: str = '') -> torch.Tensor:
    """``conv(x)`` as one oneDNN product over the NHWC rows of channels-last ``x``."""
    out = _oneDNN_rows(conv, x.permute(0, 2, 3, 1), compute_dtype(x, conv), attr, algorithm)
    return out.permute(0, 3, 1, 2)


def _gelu_algorithm(act: nn.GELU) -> str:
    return 'tanh' if act.approximate == 'tanh' else 'none'


def _inference(x: torch.Tensor, *convs: nn.Conv2d) -> bool:
    """Whether oneDNN's product runs: no graph is recorded and this CPU's oneDNN runs it
    in the dtype of the convolution."""
    return not _records_grad(x, *convs) and onednn_runs(compute_dtype(x, convs[0]))


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution. On channels-last input, one matrix product over
    the NHWC view of ``x`` with the conv weight viewed as (out, in): on CPU in inference
    oneDNN's, which adds the bias as it writes (the BLAS ``addmm`` copies the bias into
    the output first, one pass more, and was 4-13% slower on AS-MLP's shapes here),
    otherwise ``F.linear``."""
    if not is_channels_last(x):
        return conv(x)
    if _cpu_fast(x, conv) and _inference(x, conv):
        return _oneDNN_inference(conv, x)
    return F.linear(x.permute(0, 2, 3, 1), _matrix(conv), conv.bias).permute(0, 3, 1, 2)


def _once(ctx, what: str) -> None:
    """Backward of the functions below overwrites what they saved: refuse a second one."""
    if ctx.spent:
        raise RuntimeError(f'the backward of AS-MLP\'s fused {what} overwrites its saved '
                           'tensors and runs once per forward; for a second backward '
                           '(retain_graph=True), run the forward inside '
                           'asmlp_mm.fast.disabled()')
    ctx.spent = True


class _NoDoubleBackward(torch.autograd.Function):
    """The gradients a fused backward computed while a graph of the backward itself was
    recorded (``create_graph=True``), linked to ``link`` (an incoming gradient that
    requires grad): differentiating through them raises (see :func:`_once_differentiable`).
    """

    @staticmethod
    def forward(ctx, what, link, *grads):
        ctx.what = what
        return tuple(g.clone() for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f'the backward of AS-MLP\'s fused {ctx.what} is not differentiable '
                           '(a double backward, e.g. torch.autograd.grad(..., '
                           'create_graph=True) and a backward through its result); run the '
                           'forward inside asmlp_mm.fast.disabled() for that')


def _once_differentiable(what: str):
    """torch's ``once_differentiable`` (the backward runs without recording a graph, and a
    backward through its result raises), with an error that names the way out."""

    def decorate(backward):

        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return outputs
            link = next((g for g in grads if isinstance(g, torch.Tensor) and g.requires_grad),
                        None)
            if link is None:
                return outputs
            tensors = [o for o in outputs if isinstance(o, torch.Tensor)]
            guarded = iter(_NoDoubleBackward.apply(what, link, *tensors))
            return tuple(next(guarded) if isinstance(o, torch.Tensor) else o for o in outputs)

        return wrapper

    return decorate


def _addmm(bias, x, weight_t, out=None):
    if bias is None:
        return torch.mm(x, weight_t, out=out)
    return torch.addmm(bias, x, weight_t, out=out)


class _LinearGELU(torch.autograd.Function):
    """``gelu(x @ weight.T + bias)`` for 2-D ``x``; backward writes the GELU's gradient
    into the saved pre-activation, which nothing else holds."""

    @staticmethod
    def forward(ctx, x, weight, bias, approximate):
        pre = _addmm(bias, x, weight.t())
        ctx.save_for_backward(x, weight, pre)
        ctx.approximate, ctx.spent = approximate, False
        ctx.has_bias = bias is not None
        return F.gelu(pre, approximate=approximate)

    @staticmethod
    @_once_differentiable('linear + GELU')
    def backward(ctx, grad):
        _once(ctx, 'linear + GELU')
        x, weight, pre = ctx.saved_tensors
        grad_pre = torch.ops.aten.gelu_backward.grad_input(
            grad, pre, approximate=ctx.approximate, grad_input=pre)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (grad_pre.mm(weight) if need_x else None,
                grad_pre.t().mm(x) if need_w else None,
                grad_pre.sum(0) if need_b and ctx.has_bias else None, None)


def conv_gelu(conv: nn.Conv2d, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(conv(x))`` for a 1x1 convolution, fused on channels-last CPU input when
    ``act`` is a GELU (see the module docstring); otherwise :func:`pointwise_conv` and
    :func:`activate`."""
    if not _fusable(x, act, conv):
        return activate(act, pointwise_conv(conv, x))
    if _fused_training(x, conv):
        dtype = compute_dtype(x, conv)
        weight, bias = _operands(conv, dtype)
        with torch.autocast('cpu', enabled=False):
            out = _LinearGELU.apply(_rows(x.to(dtype)), weight, bias, act.approximate)
        return _from_rows(out, x)
    if not _inference(x, conv):
        return activate(act, pointwise_conv(conv, x))
    return _oneDNN_inference(conv, x, 'gelu', _gelu_algorithm(act))


class _ChannelMLP(torch.autograd.Function):
    """``gelu(x @ w1.T + b1) @ w2.T + b2`` for 2-D ``x``, the hidden activation made
    ``rows`` rows at a time and made again in backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, approximate, rows):
        pre = _addmm(b1, x, w1.t())
        out = x.new_empty(x.shape[0], w2.shape[0])
        for start in range(0, x.shape[0], rows):
            hidden = F.gelu(pre[start:start + rows], approximate=approximate)
            _addmm(b2, hidden, w2.t(), out=out[start:start + rows])
        ctx.save_for_backward(x, w1, w2, pre)
        ctx.approximate, ctx.rows, ctx.spent = approximate, rows, False
        ctx.has_bias = (b1 is not None, b2 is not None)
        return out

    @staticmethod
    @_once_differentiable('MLP')
    def backward(ctx, grad):
        _once(ctx, 'MLP')
        x, w1, w2, pre = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_w2 = torch.zeros_like(w2) if need_w2 else None
        for start in range(0, x.shape[0], ctx.rows):
            block_pre = pre[start:start + ctx.rows]
            block_grad = grad[start:start + ctx.rows]
            if need_w2:
                hidden = F.gelu(block_pre, approximate=ctx.approximate)
                grad_w2.addmm_(block_grad.t(), hidden)
            torch.ops.aten.gelu_backward.grad_input(
                block_grad.mm(w2), block_pre, approximate=ctx.approximate,
                grad_input=block_pre)
        grad_pre = pre
        return (grad_pre.mm(w1) if need_x else None,
                grad_pre.t().mm(x) if need_w1 else None,
                grad_pre.sum(0) if need_b1 and ctx.has_bias[0] else None,
                grad_w2,
                grad.sum(0) if need_b2 and ctx.has_bias[1] else None, None, None)


def _mlp_in_blocks(fc1: nn.Conv2d, act: nn.GELU, fc2: nn.Conv2d, x: torch.Tensor,
                   rows: int) -> torch.Tensor:
    """Inference of ``fc2(gelu(fc1(x)))`` ``rows`` rows at a time, each block's output
    written into the whole output while it is in the caches; the weights are packed once
    for all the blocks."""
    dtype = compute_dtype(x, fc1)
    x_rows = _rows(x)
    out = x_rows.new_empty(x_rows.shape[0], fc2.out_channels, dtype=dtype)
    with packed_weights():
        for start in range(0, x_rows.shape[0], rows):
            hidden = _oneDNN_rows(fc1, x_rows[start:start + rows], dtype, 'gelu',
                                  _gelu_algorithm(act))
            out[start:start + rows] = _oneDNN_rows(fc2, hidden, dtype)
            del hidden  # freed before the next block's is made, which reuses its memory
    return _from_rows(out, x)


def channel_mlp(fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d, x: torch.Tensor,
                rows: int = CACHE_ROWS) -> torch.Tensor:
    """``fc2(act(fc1(x)))`` for 1x1 convolutions; on channels-last CPU input with a GELU,
    in blocks of ``rows`` rows: in training :class:`_ChannelMLP`, in inference (on more
    than ``rows`` rows) :func:`_mlp_in_blocks`."""
    if _fusable(x, act, fc1, fc2):
        if _fused_training(x, fc1, fc2):
            dtype = compute_dtype(x, fc1)
            with torch.autocast('cpu', enabled=False):
                out = _ChannelMLP.apply(_rows(x.to(dtype)), *_operands(fc1, dtype),
                                        *_operands(fc2, dtype), act.approximate, rows)
            return _from_rows(out, x)
        if _inference(x, fc1, fc2) and x.numel() > rows * x.shape[1]:
            return _mlp_in_blocks(fc1, act, fc2, x, rows)
    return pointwise_conv(fc2, conv_gelu(fc1, act, x))
