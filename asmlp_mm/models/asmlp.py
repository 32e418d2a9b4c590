"""AS-MLP: An Axial Shifted MLP Architecture for Vision (Lian et al., ICLR 2022).

A four-stage pyramid of NCHW feature maps. Each block mixes tokens with the axial shift
(channel groups moved along H and along W, then 1x1 convolutions) and mixes channels with a
1x1-convolution MLP; every normalization is GroupNorm with a single group.

Fast path: on CPU (or for any channels-last input) the backbone runs in channels-last
memory: every 1x1 convolution is then one matrix product over the NHWC view of its input
(the (out, in, 1, 1) conv weight viewed as (out, in)), GroupNorm uses its channels-last
kernel, and the projections followed by a GELU are fused with it on CPU
(:mod:`asmlp_mm.ops.pointwise`: one oneDNN product in inference; in training autograd
functions that keep fewer and smaller tensors). In inference the GELUs and residual
additions write into tensors the block has just made instead of allocating new ones, and
the patch embedding and each stage run on a few images at a time (about
:attr:`ASMLP.chunk_tokens` pixels), so that a block's intermediate tensors stay in the CPU
caches instead of streaming through memory, and a stage run in many chunks packs its
weights for oneDNN once; every op treats images independently, so the outputs do not
change. The computation, the parameters and the state-dict layout are those of the plain
NCHW modules.

Forward hooks see what they would see on the plain modules: a module that hooks watch is
called (not fused away), a stage holding one runs on the whole batch, and no tensor a hook
has seen is written into afterwards.
"""
import math
import numbers
from collections.abc import Iterable
from copy import deepcopy
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, ModuleList, PretrainedInit, initialize
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import axial_shift, check_shift_args
from ..ops.axial_shift import is_int
from ..ops.torch_compat import guard_group_norms
from ..ops.pointwise import (CACHE_ROWS, activate, add_into, channel_mlp, conv_gelu,
                             hooks_see, is_channels_last, is_traced, may_overwrite,
                             packed_weights, pointwise_conv)

CONNECTIONS = ('parallel', 'serial')


def check_positive_int(value, name: str) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming ``name`` unless ``value`` is an integer
    >= 1."""
    if not is_int(value):
        raise TypeError(f'{name} must be a positive integer, got {value!r} '
                        f'({type(value).__name__})')
    if value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value}')


#: Norm layers that take inputs of another rank than N x C x H x W, and what to use instead
#: (InstanceNorm3d even runs, wrongly: it takes each 4-dim map for one unbatched volume).
OTHER_RANK_NORMS = {nn.BatchNorm1d: 'BN', nn.BatchNorm3d: 'BN', nn.InstanceNorm1d: 'IN',
                    nn.InstanceNorm3d: 'IN'}


def check_norm_layer(norm: nn.Module, norm_cfg: dict) -> None:
    """Raise ``ValueError`` unless ``norm`` (built from ``norm_cfg``) takes the N x C x H x W
    feature maps of AS-MLP.

    A plain ``nn.LayerNorm`` normalizes the last dimension, which is W here: it fails deep
    inside torch, or normalizes the wrong dimension where W equals the channel count.
    """
    released = ("norm_cfg=dict(type='GN', num_groups=1), the released AS-MLP's, which "
                'normalizes each image over C, H and W')
    if isinstance(norm, nn.LayerNorm) and type(norm).forward is nn.LayerNorm.forward:
        raise ValueError(f'norm_cfg={norm_cfg} builds nn.LayerNorm, which normalizes the '
                         f'last dimension: W of the N x C x H x W feature maps of AS-MLP. '
                         f"Use {released} (or mmpretrain's 'LN2d' for a LayerNorm over "
                         f'the channels of each pixel)')
    for cls, instead in OTHER_RANK_NORMS.items():
        if isinstance(norm, cls):
            raise ValueError(f'norm_cfg={norm_cfg} builds nn.{cls.__name__}, which takes no '
                             f"N x C x H x W feature maps: use type='{instead}' or "
                             f'{released}')


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def residual(x: torch.Tensor, branch: torch.Tensor, drop_path: nn.Module,
             *sources: nn.Module) -> torch.Tensor:
    """``x + drop_path(branch)`` with fewer passes: stochastic depth as one fused
    multiply-add (the same random draws as mmcv's ``DropPath``), and in inference the sum
    written into ``branch``, unless forward hooks have seen it: hooks on ``drop_path`` or on
    the ``sources`` that returned ``branch``."""
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0:
        keep = 1 - drop_path.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.dim() - 1)
        scale = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return torch.addcmul(x, branch, scale.div_(keep))
    branch = drop_path(branch)
    if may_overwrite(branch) and not hooks_see(drop_path, inputs=True) \
            and not any(hooks_see(m) for m in sources):
        return branch.add_(x)
    return x + branch


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of an NCHW tensor to a multiple of ``multiple``."""
    pad_h = -x.shape[2] % multiple
    pad_w = -x.shape[3] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2) for even H and W: channel block ``2 * dw + dh``
    holds the pixels at (row offset dh, column offset dw) of each 2x2 cell, i.e. the
    sub-grids (0, 0), (1, 0), (0, 1), (1, 1). One copy, in the memory format of ``x`` (so
    that in training the gradient also comes back in it)."""
    n, c, h, w = x.shape
    if is_channels_last(x):
        cells = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
        return cells.permute(0, 1, 3, 4, 2, 5).reshape(n, h // 2, w // 2, 4 * c) \
            .permute(0, 3, 1, 2)
    cells = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return cells.permute(0, 5, 3, 1, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` convolution followed by a norm.

    Inputs whose size is not a multiple of the patch size are zero-padded (bottom/right).

    Args:
        in_channels (int): Channels of the input image.
        embed_dims (int): Channels of the output tokens.
        patch_size (int): Side of the square patches (kernel size and stride).
        norm_cfg (dict): Config of the norm layer.
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int,
                 norm_cfg: dict):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x):
        return self.norm(self.proj(pad_to_multiple(x, self.patch_size)))


class PatchMerging(nn.Module):
    """2x2 space-to-depth, norm, then a bias-free 1x1 projection from 4C to ``out_channels``.

    The four sub-grids are concatenated in the order (0, 0), (1, 0), (0, 1), (1, 1) of
    (row offset, column offset). Odd sizes are zero-padded first.

    Args:
        in_channels (int): Channels C of the input.
        out_channels (int): Channels of the output (2C in AS-MLP).
        norm_cfg (dict): Config of the norm layer (over the 4C channels).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.norm = build_norm_layer(norm_cfg, 4 * in_channels)[1]
        self.reduction = conv1x1(4 * in_channels, out_channels, bias=False)

    def forward(self, x):
        return pointwise_conv(self.reduction, self.norm(space_to_depth(pad_to_multiple(x, 2))))


class AxialShiftMixer(nn.Module):
    """Token mixing by axial shifts.

    ``proj_in -> norm -> act -> [shift along W -> proj_w -> act] (+|->)
    [shift along H -> proj_h -> act] -> norm -> proj_out``, all projections 1x1 convs.

    Args:
        channels (int): Number of channels.
        shift_size (int): Number of channel groups (odd). Defaults to 5.
        dilation (int): Spacing of the shifts. Defaults to 1.
        padding (str): Padding mode of the shift. Defaults to 'zero'.
        connection (str): 'parallel' sums the W and H branches (as published); 'serial'
            feeds the W branch's output to the H branch. Defaults to 'parallel'.
        norm_cfg (dict): Config of the norm layers. Defaults to GroupNorm with one group.
        act_cfg (dict): Config of the activation. Defaults to GELU.
    """

    def __init__(self, channels: int, shift_size: int = 5, dilation: int = 1,
                 padding: str = 'zero', connection: str = 'parallel',
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        check_shift_args(shift_size, dilation, padding)
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}')
        self.shift_size = int(shift_size)
        self.dilation = int(dilation)
        self.padding = padding
        self.serial = connection == 'serial'
        self.proj_in = conv1x1(channels, channels)
        self.norm_in = build_norm_layer(norm_cfg, channels)[1]
        self.proj_w = conv1x1(channels, channels)
        self.proj_h = conv1x1(channels, channels)
        self.norm_out = build_norm_layer(norm_cfg, channels)[1]
        self.proj_out = conv1x1(channels, channels)
        self.act = build_activation_layer(act_cfg)

    def shift(self, x, dim: int):
        return axial_shift(x, dim, self.shift_size, self.dilation, self.padding)

    def forward(self, x):
        # the norm's output is fresh: the GELU may write into it unless hooks have seen it
        x = activate(self.act, self.norm_in(pointwise_conv(self.proj_in, x)),
                     overwrite=not hooks_see(self.norm_in))
        x_w = conv_gelu(self.proj_w, self.act, self.shift(x, 3))
        x_h = x_w if self.serial else x
        x_h = conv_gelu(self.proj_h, self.act, self.shift(x_h, 2))
        # x_w is fresh: sum into it where no backward needs it (see add_into)
        x = x_h if self.serial else add_into(x_w, x_h, self.act)
        return pointwise_conv(self.proj_out, self.norm_out(x))


class ChannelMLP(nn.Module):
    """1x1 conv (C -> ratio*C) -> act -> dropout -> 1x1 conv (-> C) -> dropout.

    Args:
        channels (int): Channels C of the input and output.
        mlp_ratio (float): Hidden width relative to C. Defaults to 4.
        drop_rate (float): Dropout after the activation and after the output. Defaults
            to 0.
        act_cfg (dict): Config of the activation. Defaults to GELU.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4., drop_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.fc1 = conv1x1(channels, hidden)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = conv1x1(hidden, channels)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x):
        if self.drop.p == 0 and not hooks_see(self.drop, inputs=True):
            return channel_mlp(self.fc1, self.act, self.fc2, x)
        x = self.drop(conv_gelu(self.fc1, self.act, x))
        return self.drop(pointwise_conv(self.fc2, x))


class ASMLPBlock(nn.Module):
    """``x + DropPath(AxialShiftMixer(norm(x)))``, then ``x + DropPath(MLP(norm(x)))``.

    Args:
        channels (int): Number of channels.
        mlp_ratio (float): Hidden width of the MLP relative to ``channels``. Defaults to 4.
        drop_rate (float): Dropout in the MLP. Defaults to 0.
        drop_path_rate (float): Stochastic depth of both residual branches. Defaults to 0.
        with_cp (bool): Recompute the block in backward to save memory. Defaults to False.
        norm_cfg (dict): Config of the norm layers. Defaults to GroupNorm with one group.
        act_cfg (dict): Config of the activations. Defaults to GELU.
        **mixer_kwargs: shift_size, dilation, padding, connection of the mixer
            (:class:`AxialShiftMixer`).
    """

    def __init__(self, channels: int, mlp_ratio: float = 4., drop_rate: float = 0.,
                 drop_path_rate: float = 0., with_cp: bool = False,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'), **mixer_kwargs):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, channels)[1]
        self.token_mixer = AxialShiftMixer(
            channels, norm_cfg=norm_cfg, act_cfg=act_cfg, **mixer_kwargs)
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = ChannelMLP(channels, mlp_ratio, drop_rate, act_cfg)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _forward(self, x):
        # the modules whose hooks may have seen the branches (the last 1x1 convs run as
        # modules on NCHW input; in inference the dropout returns what it is given)
        mixer, mlp = self.token_mixer, self.mlp
        x = residual(x, mixer(self.norm1(x)), self.drop_path, mixer, mixer.proj_out)
        return residual(x, mlp(self.norm2(x)), self.drop_path, mlp, mlp.fc2, mlp.drop)

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class ASMLP(BaseModule):
    """AS-MLP backbone, for classification (mmpretrain) and dense prediction (mmdet, mmseg).

    A patch embedding (stride ``patch_size``) followed by four stages of :class:`ASMLPBlock`;
    stages 1-3 start with a :class:`PatchMerging` that halves the resolution and doubles the
    width. Stage ``i`` outputs ``embed_dims * 2**i`` channels at stride ``patch_size * 2**i``,
    each output through its own norm layer (``norm{i}``). For classification keep
    ``out_indices=(3,)``: ``norm3`` is then the final norm before pooling.

    Args:
        arch (str | dict): A preset of :attr:`arch_zoo` ('tiny', 'small', 'base', or their
            initials) or a dict with ``embed_dims`` and ``depths`` (and optionally
            ``drop_path_rate``). Defaults to 'tiny'.
        in_channels (int): Input channels. Defaults to 3.
        patch_size (int): Patch size of the embedding. Defaults to 4.
        mlp_ratio (float): MLP hidden width ratio. Defaults to 4.
        shift_size (int): Channel groups of the axial shift, odd >= 1. Defaults to 5.
        dilation (int | Sequence[int]): Shift dilation, one for all stages or one per
            stage. Defaults to 1.
        padding (str): 'zero', 'replicate', 'reflect' or 'circular'. Defaults to 'zero'.
        connection (str): 'parallel' or 'serial' axial branches. Defaults to 'parallel'.
        drop_rate (float): Dropout after the patch embedding and inside MLPs. Defaults to 0.
        drop_path_rate (float, optional): Stochastic depth rate, increasing linearly over
            the blocks up to this value. Defaults to the arch's value (T 0.2, S 0.3, B 0.5).
        out_indices (int | Sequence[int]): Stages to output. Defaults to (3,).
        frozen_stages (int): Freeze the patch embedding (>= 0) and the first
            ``frozen_stages`` stages with their output norms. -1 freezes nothing. Defaults
            to -1.
        norm_eval (bool): Keep batch-norm layers (if ``norm_cfg`` uses them) in eval mode
            while training. Defaults to False.
        with_cp (bool): Gradient checkpointing per block. Defaults to False.
        norm_cfg (dict): Norm layer config. Defaults to GroupNorm with one group.
        act_cfg (dict): Activation config. Defaults to GELU.
        init_cfg (dict | list[dict], optional): Initialization config; e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` loads the backbone
            of an mmpretrain AS-MLP classifier checkpoint. Defaults to None: PyTorch's own
            initialization, as in the authors' released model (it initializes only
            ``nn.Linear`` layers and norms, and the backbone has no linear layer and
            PyTorch's norms start at ones and zeros). :attr:`TRUNC_NORMAL_INIT` puts
            truncated-normal (std 0.02) weights on every convolution instead.
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {
            'embed_dims': 96, 'depths': [2, 2, 6, 2], 'drop_path_rate': 0.2}),
        **dict.fromkeys(['s', 'small'], {
            'embed_dims': 96, 'depths': [2, 2, 18, 2], 'drop_path_rate': 0.3}),
        **dict.fromkeys(['b', 'base'], {
            'embed_dims': 128, 'depths': [2, 2, 18, 2], 'drop_path_rate': 0.5}),
    }
    num_stages = 4
    #: An alternative to the released (PyTorch default) initialization, for ``init_cfg``:
    #: truncated-normal std 0.02 weights and zero biases on the convolutions (about 3x
    #: smaller than PyTorch's in stage 0).
    TRUNC_NORMAL_INIT = dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.)
    #: CPU inference runs the patch embedding and each stage on groups of images of about
    #: this many output tokens (pixels) at a time (see :meth:`forward`).
    chunk_tokens = CACHE_ROWS
    #: ... and packs the weights of a stage for oneDNN once (see
    #: :func:`asmlp_mm.ops.pointwise.packed_weights`) where it runs in at least this many
    #: chunks.
    pack_min_chunks = 4

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 patch_size: int = 4,
                 mlp_ratio: float = 4.,
                 shift_size: int = 5,
                 dilation: Union[int, Sequence[int]] = 1,
                 padding: str = 'zero',
                 connection: str = 'parallel',
                 drop_rate: float = 0.,
                 drop_path_rate: Optional[float] = None,
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        check_positive_int(in_channels, 'in_channels')
        check_positive_int(patch_size, 'patch_size')
        if not isinstance(mlp_ratio, numbers.Real) or isinstance(mlp_ratio, (bool, np.bool_)):
            raise TypeError(f'mlp_ratio must be a positive number, got {mlp_ratio!r} '
                            f'({type(mlp_ratio).__name__})')
        if not (0 < mlp_ratio < math.inf and int(embed_dims * mlp_ratio) >= 1):
            raise ValueError(f'mlp_ratio must be positive and give MLPs of at least one '
                             f'hidden channel (int(embed_dims * mlp_ratio) >= 1 for '
                             f'embed_dims={embed_dims}), got {mlp_ratio!r}')
        if drop_path_rate is None:
            drop_path_rate = self.arch_settings.get('drop_path_rate', 0.)
        if not (isinstance(drop_path_rate, numbers.Real) and 0 <= drop_path_rate < 1):
            raise ValueError(f'drop_path_rate must be a number in [0, 1) (the chance that the '
                             f'deepest block skips a branch), got {drop_path_rate!r}')
        if not (isinstance(drop_rate, numbers.Real) and 0 <= drop_rate < 1):
            # nn.Dropout takes 1, which zeroes every input in training
            raise ValueError(f'drop_rate must be a number in [0, 1) (the dropout after the '
                             f'patch embedding and in the MLPs), got {drop_rate!r}')
        dilations = self._per_stage(dilation, 'dilation')
        check_shift_args(shift_size, 1, padding)
        for d in dilations:
            check_shift_args(shift_size, d, padding)
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}')
        self.out_indices = self._parse_out_indices(out_indices)
        if not is_int(frozen_stages) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an integer in [-1, {self.num_stages}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = int(frozen_stages)
        for flag, name in ((norm_eval, 'norm_eval'), (with_cp, 'with_cp')):
            if not isinstance(flag, (bool, np.bool_)):  # a string such as 'no' is true
                raise TypeError(f'{name} must be True or False, got {flag!r} '
                                f'({type(flag).__name__})')
        self.norm_eval = bool(norm_eval)

        self.embed_dims = embed_dims
        self.num_features = [embed_dims * 2**i for i in range(self.num_stages)]
        #: stride of each stage's output (the patch embedding's, doubled by each merging)
        self.strides = [patch_size * 2**i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, norm_cfg)
        check_norm_layer(self.patch_embed.norm, norm_cfg)
        self.drop_after_embed = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        for i, depth in enumerate(depths):
            stage = nn.Sequential()
            if i > 0:
                stage.add_module('downsample', PatchMerging(
                    self.num_features[i - 1], self.num_features[i], norm_cfg))
            first = sum(depths[:i])
            stage.add_module('blocks', nn.Sequential(*[
                ASMLPBlock(self.num_features[i], mlp_ratio=mlp_ratio, drop_rate=drop_rate,
                           drop_path_rate=dpr[first + j], with_cp=with_cp,
                           norm_cfg=norm_cfg, act_cfg=act_cfg, shift_size=shift_size,
                           dilation=dilations[i], padding=padding, connection=connection)
                for j in range(depth)
            ]))
            self.stages.append(stage)
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()
        guard_group_norms(self)  # a crash of torch < 2.14 next to frozen layers

    @classmethod
    def _parse_arch(cls, arch) -> Dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(f'Unknown AS-MLP arch {arch!r}; choose one of '
                                 f'{sorted(set(cls.arch_zoo))} or pass a dict with '
                                 f'"embed_dims" and "depths"')
            return deepcopy(cls.arch_zoo[key])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = {'embed_dims', 'depths'} - set(arch)
        if missing:
            raise ValueError(f'A custom arch dict needs the keys "embed_dims" and "depths"; '
                             f'missing {sorted(missing)} in {arch}')
        unknown = set(arch) - set(cls.arch_zoo['tiny'])
        if unknown:
            raise ValueError(f'A custom arch dict takes the keys {sorted(cls.arch_zoo["tiny"])}'
                             f'; unknown {sorted(unknown)} in {arch}')
        depths = arch['depths']
        if isinstance(depths, Iterable) and not isinstance(depths, (str, bytes)):
            depths = list(depths)
        if not isinstance(depths, list) or len(depths) != cls.num_stages or \
                not all(is_int(d) and d >= 1 for d in depths):
            raise ValueError(f'arch "depths" must list {cls.num_stages} positive integer '
                             f'block counts, got {depths!r}')
        if not is_int(arch['embed_dims']) or arch['embed_dims'] < 1:
            raise ValueError(f'arch "embed_dims" must be a positive integer, got '
                             f'{arch["embed_dims"]!r}')
        return dict(deepcopy(arch), embed_dims=int(arch['embed_dims']),
                    depths=[int(d) for d in depths])

    @classmethod
    def _per_stage(cls, value, name) -> List[int]:
        if is_int(value):
            return [int(value)] * cls.num_stages
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f'{name} must be an int or a sequence of {cls.num_stages} ints '
                            f'(one per stage), got {value!r} ({type(value).__name__})')
        value = list(value)
        if len(value) != cls.num_stages:
            raise ValueError(f'{name} must be an int or one value per stage '
                             f'({cls.num_stages}), got {value}')
        if not all(is_int(v) for v in value):
            raise TypeError(f'{name} must be an int or a sequence of {cls.num_stages} ints '
                            f'(one per stage), got {value!r}')
        return [int(v) for v in value]

    @classmethod
    def _parse_out_indices(cls, out_indices) -> List[int]:
        expected = (f'out_indices must be a stage index or a sequence of them, integers in '
                    f'[0, {cls.num_stages - 1}] (or negative)')
        if is_int(out_indices):
            out_indices = [out_indices]
        if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Iterable):
            raise TypeError(f'{expected}, got {out_indices!r} ({type(out_indices).__name__})')
        out_indices = list(out_indices)
        bad = [i for i in out_indices if not is_int(i)]
        if bad:
            raise TypeError(f'{expected}, got {out_indices!r} (not integers: {bad!r})')
        parsed = []
        for i in out_indices:
            if not -cls.num_stages <= i < cls.num_stages:
                raise ValueError(f'out_indices must lie in [0, {cls.num_stages - 1}] '
                                 f'(or negative), got {list(out_indices)}')
            parsed.append(int(i) % cls.num_stages)
        if len(parsed) == 0:
            raise ValueError('out_indices must name at least one stage')
        return sorted(set(parsed))

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def init_weights(self):
        """Initialize, or load ``init_cfg=dict(type='Pretrained', checkpoint, prefix)``.

        Unlike mmengine's non-strict loading, a checkpoint that does not fit this arch
        (other widths or depths, missing blocks) raises a ``ValueError`` naming the
        mismatched keys, and the prefix to set where the checkpoint holds this backbone's
        keys under one (a detector's, under 'backbone.'). Only the output norms
        (``norm{i}``) may be absent, since a classifier checkpoint has just the final one.
        A leading 'module.' (a checkpoint saved from a DDP-wrapped model) is dropped, as
        the runner's ``load_from`` does.

        ``init_cfg`` may also be a list holding one 'Pretrained' entry: as in mmengine, the
        other entries initialize the model first and the checkpoint is loaded over them (so
        they set what it lacks, e.g. the output norms). Two 'Pretrained' entries are
        refused: which checkpoint would win is not clear.
        """
        pretrained, others = self._split_init_cfg()
        if pretrained is None:
            return super().init_weights()
        if others:
            initialize(self, others)
        self._load_pretrained(pretrained)
        self._is_init = True

    def _split_init_cfg(self):
        """The 'Pretrained' entry of ``init_cfg`` (None if it has none) and the others."""
        cfgs = self.init_cfg
        if cfgs is None:
            cfgs = []
        elif isinstance(cfgs, dict):
            cfgs = [cfgs]
        pretrained = [cfg for cfg in cfgs
                      if isinstance(cfg, dict) and cfg.get('type') in ('Pretrained',
                                                                       PretrainedInit)]
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg may hold one Pretrained entry (ASMLP loads one '
                             f'checkpoint), got {len(pretrained)}: {pretrained}')
        others = [cfg for cfg in cfgs if not any(cfg is p for p in pretrained)]
        return (pretrained[0] if pretrained else None), others

    def _load_pretrained(self, cfg: dict) -> None:
        """Load the checkpoint of a 'Pretrained' init config, if it fits (see
        :meth:`init_weights`). A checkpoint in the layout of the authors' released code
        (their classifier, mmdet 2.x detector or mmseg 0.x segmentor) is converted as it
        loads, as ``tools/model_converters/asmlp_to_mm.py`` converts it, and the log says
        so."""
        from mmengine.logging import print_log
        from mmengine.runner.checkpoint import _load_checkpoint
        from ..checkpoint_io import (CheckpointMismatchError, CheckpointNotFoundError,
                                     check_fits, checkpoint_state_dict)
        from .weights import (ConversionError, checkpoint_parts, convert_published,
                              is_published_layout, listed)
        if not cfg.get('checkpoint'):
            raise ValueError(f"init_cfg {cfg} names no checkpoint: "
                             f"dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])")
        checkpoint, prefix = cfg['checkpoint'], cfg.get('prefix') or ''
        if prefix and not prefix.endswith('.'):
            prefix += '.'  # as mmengine's loader
        try:
            loaded = _load_checkpoint(checkpoint, map_location='cpu')
        except CheckpointNotFoundError as err:
            raise CheckpointNotFoundError(
                f'{err}: the pretrained weights of ASMLP (init_cfg). Train a classifier '
                f'(configs/asmlp/) or download the published one and put it there (as it '
                f'is, or converted by tools/model_converters/asmlp_to_mm.py), or set its '
                f'path with --cfg-options model.backbone.init_cfg.checkpoint=PATH; '
                f'model.backbone.init_cfg=None trains from random weights') from None
        if is_published_layout(loaded):
            try:
                converted = convert_published(checkpoint_parts(loaded)[0],
                                              num_stages=self.num_stages)
            except ConversionError as err:
                raise CheckpointMismatchError(f'checkpoint {checkpoint!r}, in the layout of '
                                              f'the authors\' released code: {err}') from None
            if converted.unmapped:
                raise CheckpointMismatchError(
                    f'checkpoint {checkpoint!r} is in the layout of the authors\' released '
                    f'code, but {len(converted.unmapped)} of its keys have no mapping: '
                    f'{listed(converted.unmapped)}; tools/model_converters/asmlp_to_mm.py '
                    f'--drop-unmapped converts it without them')
            loaded = converted.state_dict
            print_log(f'init_cfg: {checkpoint} is in the layout of the authors\' released '
                      f'code ({converted.task}): its weights are converted as they load, as '
                      f'tools/model_converters/asmlp_to_mm.py converts them', logger='current')
        state = checkpoint_state_dict(loaded, checkpoint, prefix)
        if prefix and not state:
            raise ValueError(f'checkpoint {checkpoint!r} has no keys starting with '
                             f'{prefix!r}')
        check_fits(self, state, checkpoint, f'ASMLP(embed_dims={self.embed_dims}, '
                   f'depths={self.arch_settings["depths"]})', optional=['norm[0-3].*'],
                   prefix_option='init_cfg')
        self.load_state_dict(state, strict=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _not_a_batch(self, x: torch.Tensor) -> str:
        """The error message for an input that is not 4-dim (a wrong channel count already
        gets torch's clear one from the patch embedding)."""
        one_image = x.dim() == 3 and x.shape[0] == self.patch_embed.proj.in_channels
        fix = '; add the batch dimension with x[None]' if one_image else ''
        return (f'ASMLP expects an N x C x H x W batch, got a {x.dim()}-dim tensor of shape '
                f'{tuple(x.shape)}{fix}')

    def _hooks_inside(self, fn) -> bool:
        """Whether forward hooks watch a module that ``fn`` runs: they would each see the
        chunks, not the batch."""
        modules = [self.patch_embed, self.drop_after_embed] if fn == self._embed else [fn]
        return any(hooks_see(m, inputs=True) for module in modules
                   for m in module.modules())

    def _embed(self, x):
        return self.drop_after_embed(self.patch_embed(x))

    def _chunked(self, fn, x, stride: int):
        """``fn(x)`` for an ``fn`` that treats every image on its own and reduces the size
        by ``stride``. In CPU inference, ``fn`` runs on groups of images of about
        :attr:`chunk_tokens` output pixels, whose outputs are then concatenated."""
        tokens = -(-x.shape[2] // stride) * -(-x.shape[3] // stride)
        per_chunk = max(1, self.chunk_tokens // tokens)
        if per_chunk >= x.shape[0] or self.training or x.device.type != 'cpu' \
                or is_traced() or self._hooks_inside(fn):
            return fn(x)
        parts = x.split(per_chunk)
        # every chunk runs the same layers: pack their weights for oneDNN once, where the
        # chunks are enough to repay the packing and the extra copy of the stage's weights
        with packed_weights(enabled=len(parts) >= self.pack_min_chunks):
            return torch.cat([fn(part) for part in parts])

    def forward(self, x):
        if x.dim() != 4:  # not the "rank 4" error of the channels-last copy below
            raise ValueError(self._not_a_batch(x))
        # channels-last inside (see the module docstring); outputs in the input's format
        keep_channels_last = is_channels_last(x) and not x.is_contiguous()
        if x.device.type == 'cpu' or keep_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self._chunked(self._embed, x, self.patch_embed.patch_size)
        outs = []
        for i, stage in enumerate(self.stages):
            x = self._chunked(stage, x, 1 if i == 0 else 2)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out if keep_channels_last else out.contiguous())
        return tuple(outs)
