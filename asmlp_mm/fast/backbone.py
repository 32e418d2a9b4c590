"""The fast execution of an AS-MLP backbone: the maths of its plain modules, with fewer
passes over memory.

:func:`forward` takes the model (an :class:`~asmlp_mm.models.ASMLP`) and reads its modules
by their attributes (``patch_embed``, ``stages``, a block's ``token_mixer``, ``mlp``, ...):

- **Channels-last.** On CPU (or for a channels-last input) the feature maps are
  channels-last: every 1x1 convolution is then one matrix product over the NHWC rows,
  fused with the GELU after it (:mod:`.pointwise`), and GroupNorm takes its channels-last
  kernel. The outputs come back in the memory format of the input.
- **In place.** In inference the GELUs and the residual sums write into tensors the block
  has just made, instead of new ones; in training stochastic depth is one fused
  multiply-add, with the random draws of mmcv's ``DropPath``.
- **Chunks.** In CPU inference the patch embedding and each stage run on a few images at a
  time (about :data:`CHUNK_TOKENS` output pixels), so that a block's intermediate tensors
  stay in the CPU caches instead of streaming through memory; a stage run in
  :data:`PACK_MIN_CHUNKS` chunks or more packs its weights for oneDNN once. Every op treats
  images independently: the outputs do not change.

**Hooks.** A module that hooks watch (forward hooks, forward pre-hooks, backward hooks; its
own or global ones) runs as the plain module, with what it holds: its hooks see what
they would see without this layer, and no tensor they saw is written into afterwards. A
stage (or the patch embedding) that holds one runs plain, on the whole batch.
"""
import functools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from torch.nn.modules import module as _module

from ..ops.torch_compat import is_channels_last, is_traced
from .pointwise import (CACHE_ROWS, activate, add_into, channel_mlp, conv_gelu, may_overwrite,
                        packed_weights, pointwise_conv)
from .switch import enabled

#: CPU inference runs the patch embedding and each stage on groups of images of about this
#: many output pixels
CHUNK_TOKENS = CACHE_ROWS
#: ... and packs the weights of a stage for oneDNN once where it runs in at least this many
#: chunks (fewer do not repay the packing and the copy of the weights it makes)
PACK_MIN_CHUNKS = 4


def applies() -> bool:
    """Whether :func:`forward` runs: the speed-ups are :func:`~.switch.enabled` and no
    tracer, exporter or compiler is recording (those get the plain modules)."""
    return enabled() and not is_traced()


def _keeps(hooks: dict) -> bool:
    """Whether pre-hooks hold one that may keep or change what it sees (not one marked
    ``keeps_nothing``, as the GroupNorm guard of :mod:`asmlp_mm.ops.torch_compat`)."""
    return any(not getattr(hook, 'keeps_nothing', False) for hook in hooks.values())


def watched(*modules: nn.Module) -> bool:
    """Whether hooks watch any of ``modules`` or a module they hold."""
    if (_module._global_forward_hooks or _module._global_backward_hooks
            or _module._global_backward_pre_hooks
            or _keeps(_module._global_forward_pre_hooks)):
        return True
    return any(m._forward_hooks or m._backward_hooks or m._backward_pre_hooks
               or _keeps(m._forward_pre_hooks)
               for module in modules for m in module.modules())


def forward(model: nn.Module, x: torch.Tensor):
    """The outputs of ``model(x)`` for an ASMLP ``model`` and a batch ``x`` of images."""
    keep_channels_last = is_channels_last(x) and not x.is_contiguous()
    if x.device.type == 'cpu' or keep_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    in_chunks = x.device.type == 'cpu' and not model.training

    def embed(x):
        return model.drop_after_embed(model.patch_embed(x))

    x = _chunked(embed, x, model.patch_embed.patch_size,
                 in_chunks and not watched(model.patch_embed, model.drop_after_embed))
    outs = []
    for i, stage in enumerate(model.stages):
        if watched(stage):
            x = stage(x)
        else:
            x = _chunked(functools.partial(_stage, stage), x, 1 if i == 0 else 2, in_chunks)
        if i in model.out_indices:
            out = getattr(model, f'norm{i}')(x)
            outs.append(out if keep_channels_last else out.contiguous())
    return tuple(outs)


def _chunked(fn: Callable, x: torch.Tensor, stride: int, in_chunks: bool) -> torch.Tensor:
    """``fn(x)`` for an ``fn`` that treats every image on its own and reduces the size by
    ``stride``; ``in_chunks``, on groups of images of about :data:`CHUNK_TOKENS` output
    pixels, whose outputs are then concatenated."""
    tokens = -(-x.shape[2] // stride) * -(-x.shape[3] // stride)
    per_chunk = max(1, CHUNK_TOKENS // tokens)
    if not in_chunks or per_chunk >= x.shape[0]:
        return fn(x)
    parts = x.split(per_chunk)
    # every chunk runs the same layers: pack their weights once, where it pays
    with packed_weights(enabled=len(parts) >= PACK_MIN_CHUNKS):
        return torch.cat([fn(part) for part in parts])


def _stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(stage, 'downsample'):
        merging = stage.downsample
        x = pointwise_conv(merging.reduction, merging.norm(space_to_depth(x)))
    for block in stage.blocks:
        if block.with_cp and x.requires_grad:
            x = cp.checkpoint(_block, block, x, use_reentrant=False)
        else:
            x = _block(block, x)
    return x


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """PatchMerging's (N, C, H, W) -> (N, 4C, H/2, W/2), odd sizes zero-padded first: channel
    block ``2 * dw + dh`` holds the pixels at (row offset dh, column offset dw) of each 2x2
    cell. One copy, in the memory format of ``x`` (so that in training the gradient also
    comes back in it)."""
    if x.shape[2] % 2 or x.shape[3] % 2:
        x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    n, c, h, w = x.shape
    if is_channels_last(x):
        cells = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
        return cells.permute(0, 1, 3, 4, 2, 5).reshape(n, h // 2, w // 2, 4 * c) \
            .permute(0, 3, 1, 2)
    cells = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return cells.permute(0, 5, 3, 1, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def _block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = _residual(x, _mixer(block.token_mixer, block.norm1(x)), block.drop_path)
    return _residual(x, _mlp(block.mlp, block.norm2(x)), block.drop_path)


def _residual(x: torch.Tensor, branch: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(branch)`` for a ``branch`` just made: stochastic depth as one fused
    multiply-add (the same random draws as mmcv's ``DropPath``), and where no backward
    needs it the sum written into ``branch``."""
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0:
        keep = 1 - drop_path.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.dim() - 1)
        scale = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return torch.addcmul(x, branch, scale.div_(keep))
    branch = drop_path(branch)
    return branch.add_(x) if may_overwrite(branch) else x + branch


def _mixer(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # the GELU writes into the norm's output, the H branch is summed into the W branch's
    x = activate(mixer.act, mixer.norm_in(pointwise_conv(mixer.proj_in, x)))
    x_w = conv_gelu(mixer.proj_w, mixer.act, mixer.shift(x, 3))
    x_h = conv_gelu(mixer.proj_h, mixer.act, mixer.shift(x_w if mixer.serial else x, 2))
    x = x_h if mixer.serial else add_into(x_w, x_h, mixer.act)
    return pointwise_conv(mixer.proj_out, mixer.norm_out(x))


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if mlp.drop.p == 0 or not mlp.drop.training:
        return channel_mlp(mlp.fc1, mlp.act, mlp.fc2, x)
    return mlp.drop(pointwise_conv(mlp.fc2, mlp.drop(conv_gelu(mlp.fc1, mlp.act, x))))
