"""AS-MLP: An Axial Shifted MLP Architecture for Vision (Lian et al., ICLR 2022).

A four-stage pyramid of NCHW feature maps. Each block mixes tokens with the axial shift
(channel groups moved along H and along W, then 1x1 convolutions) and mixes channels with a
1x1-convolution MLP; every normalization is GroupNorm with a single group.

The modules below are the plain computation. :meth:`ASMLP.forward` hands the batch to the
speed layer, :mod:`asmlp_mm.fast`, which runs the same modules' parameters in fewer passes
over memory (``ASMLP_MM_FAST=0`` or ``asmlp_mm.fast.disabled()`` runs them as they are).
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
from mmengine.model import BaseModule, ModuleList, initialize
from torch.nn.modules.batchnorm import _BatchNorm

from .. import fast
from ..ops import axial_shift, check_shift_args
from ..ops.axial_shift import is_int
from ..ops.torch_compat import guard_group_norms
from .weights import load_pretrained, split_init_cfg

CONNECTIONS = ('parallel', 'serial')
_OTHER_RANK = 'takes no N x C x H x W feature maps: use type='
#: norm layers that do not normalize AS-MLP's N x C x H x W maps, and what to use instead
#: (InstanceNorm3d even runs, wrongly: it takes each 4-dim map for one unbatched volume)
WRONG_NORMS = {
    nn.LayerNorm: "normalizes the last dimension: W of the N x C x H x W feature maps. Use "
                  "type='GN', num_groups=1, the released AS-MLP's (or mmpretrain's 'LN2d' "
                  'for a LayerNorm over the channels of each pixel)',
    nn.BatchNorm1d: _OTHER_RANK + "'BN'", nn.BatchNorm3d: _OTHER_RANK + "'BN'",
    nn.InstanceNorm1d: _OTHER_RANK + "'IN'", nn.InstanceNorm3d: _OTHER_RANK + "'IN'",
}


def _check(ok: bool, name: str, expected: str, value, error=ValueError) -> None:
    """Raise ``error`` saying that ``name`` must be ``expected`` unless ``ok``."""
    if not ok:
        raise error(f'{name} must be {expected}, got {value!r}')


def _positive_int(value, name: str) -> int:
    _check(is_int(value), name, 'a positive integer', value, TypeError)
    _check(value >= 1, name, 'a positive integer', value)
    return int(value)


def _as_list(value) -> Optional[list]:
    """``value`` as a list where it is a sequence (not a string), else None."""
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict)):
        return list(value)
    return None


def _ints(value, name: str, expected: str) -> List[int]:
    """An integer or a sequence of them, as a list; ``TypeError`` for anything else."""
    values = [value] if is_int(value) else _as_list(value)
    _check(values is not None and all(is_int(v) for v in values), name, expected,
           value if values is None else values, TypeError)
    return [int(v) for v in values]


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of an NCHW tensor to a multiple of ``multiple``."""
    pad_h, pad_w = -x.shape[2] % multiple, -x.shape[3] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


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
        x = pad_to_multiple(x, 2)
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2],
                       x[:, :, 1::2, 1::2]], 1)
        return self.reduction(self.norm(x))


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
        _check(connection in CONNECTIONS, 'connection', f'one of {CONNECTIONS}', connection)
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
        x = self.act(self.norm_in(self.proj_in(x)))
        x_w = self.act(self.proj_w(self.shift(x, 3)))
        x_h = self.act(self.proj_h(self.shift(x_w if self.serial else x, 2)))
        return self.proj_out(self.norm_out(x_h if self.serial else x_w + x_h))


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
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


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

    def forward(self, x):

        def _inner_forward(x):
            x = x + self.drop_path(self.token_mixer(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=False)
        return _inner_forward(x)


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
            of an mmpretrain AS-MLP classifier checkpoint (see :meth:`init_weights`).
            Defaults to None: PyTorch's own initialization, as in the authors' released
            model (whose initializer touches only linear layers and norms);
            :attr:`TRUNC_NORMAL_INIT` is the truncated-normal alternative.
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
        n = self.num_stages
        self.arch_settings = self._parse_arch(arch)
        self.embed_dims = embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        in_channels = _positive_int(in_channels, 'in_channels')
        patch_size = _positive_int(patch_size, 'patch_size')
        real = isinstance(mlp_ratio, numbers.Real) and not isinstance(mlp_ratio, np.bool_)
        _check(real and not isinstance(mlp_ratio, bool), 'mlp_ratio', 'a positive number',
               mlp_ratio, TypeError)
        _check(0 < mlp_ratio < math.inf and int(embed_dims * mlp_ratio) >= 1, 'mlp_ratio',
               f'positive and give MLPs of at least one hidden channel (int(embed_dims * '
               f'mlp_ratio) >= 1 for embed_dims={embed_dims})', mlp_ratio)
        if drop_path_rate is None:
            drop_path_rate = self.arch_settings.get('drop_path_rate', 0.)
        for name, rate in (('drop_rate', drop_rate), ('drop_path_rate', drop_path_rate)):
            # nn.Dropout takes 1, which zeroes every input in training
            _check(isinstance(rate, numbers.Real) and 0 <= rate < 1, name,
                   'a number in [0, 1)', rate)
        per_stage = f'an integer or a sequence of {n} of them (one per stage)'
        dilations = _ints(dilation, 'dilation', per_stage) * (n if is_int(dilation) else 1)
        _check(len(dilations) == n, 'dilation', per_stage, dilation)
        stages = f'a stage index or a sequence of them, integers in [0, {n - 1}] (or negative)'
        out_indices = _ints(out_indices, 'out_indices', stages)
        _check(0 < len(out_indices) and all(-n <= i < n for i in out_indices), 'out_indices',
               stages, out_indices)
        self.out_indices = sorted({i % n for i in out_indices})
        _check(is_int(frozen_stages) and -1 <= frozen_stages <= n, 'frozen_stages',
               f'an integer in [-1, {n}]', frozen_stages)
        self.frozen_stages = int(frozen_stages)
        for name, flag in (('norm_eval', norm_eval), ('with_cp', with_cp)):
            # a string such as 'no' would be true
            _check(isinstance(flag, (bool, np.bool_)), name, 'True or False', flag, TypeError)
        self.norm_eval = bool(norm_eval)

        self.num_features = [embed_dims * 2**i for i in range(n)]
        #: stride of each stage's output (the patch embedding's, doubled by each merging)
        self.strides = [patch_size * 2**i for i in range(n)]
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, norm_cfg)
        self._check_norm(self.patch_embed.norm, norm_cfg)
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
        guard_group_norms(self)  # a crash of torch < 2.14 on channels-last inputs

    @classmethod
    def _parse_arch(cls, arch) -> Dict:
        if isinstance(arch, str):
            _check(arch.lower() in cls.arch_zoo, 'arch', f'one of {sorted(cls.arch_zoo)} or '
                   f'a dict with "embed_dims" and "depths"', arch)
            return deepcopy(cls.arch_zoo[arch.lower()])
        _check(isinstance(arch, dict), 'arch', 'a str or a dict', arch, TypeError)
        keys = set(cls.arch_zoo['tiny'])
        missing, unknown = {'embed_dims', 'depths'} - set(arch), set(arch) - keys
        _check(not (missing or unknown), 'a custom arch dict', f'one with the keys '
               f'"embed_dims" and "depths" (and "drop_path_rate" if any); missing '
               f'{sorted(missing)}, unknown {sorted(unknown)}', arch)
        depths, dims = _as_list(arch['depths']), arch['embed_dims']
        _check(depths is not None and len(depths) == cls.num_stages and all(
            is_int(d) and d >= 1 for d in depths), 'arch "depths"',
            f'a list of {cls.num_stages} positive integer block counts', arch['depths'])
        _check(is_int(dims) and dims >= 1, 'arch "embed_dims"', 'a positive integer', dims)
        return dict(deepcopy(arch), embed_dims=int(dims), depths=[int(d) for d in depths])

    @staticmethod
    def _check_norm(norm: nn.Module, norm_cfg: dict) -> None:
        """Refuse norm layers that do not normalize N x C x H x W maps as AS-MLP needs
        (subclasses with a forward of their own, e.g. mmpretrain's 'LN2d', are fine)."""
        for cls, why in WRONG_NORMS.items():
            if isinstance(norm, cls) and type(norm).forward is cls.forward:
                raise ValueError(f'norm_cfg={norm_cfg} builds nn.{cls.__name__}, which {why}')

    def _freeze_stages(self):
        frozen = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen += [self.stages[i]] + [getattr(self, f'norm{i}')] * (i in self.out_indices)
        for module in frozen:
            module.eval().requires_grad_(False)

    def init_weights(self):
        """Initialize, or load ``init_cfg=dict(type='Pretrained', checkpoint, prefix)``.

        Unlike mmengine's non-strict loading, a checkpoint that does not fit this arch
        raises a ``ValueError`` naming the mismatched keys (and the prefix to set); only
        the output norms (``norm{i}``) may be absent, since a classifier checkpoint has
        just the final one. The authors' layout is converted as it loads
        (:func:`~asmlp_mm.models.weights.load_pretrained`). As in mmengine, the other
        entries of an ``init_cfg`` list initialize first, the checkpoint loads over them.
        """
        pretrained, others = split_init_cfg(self.init_cfg)
        if pretrained is None:
            return super().init_weights()
        if others:
            initialize(self, others)
        load_pretrained(self, pretrained, f'ASMLP(embed_dims={self.embed_dims}, '
                        f'depths={self.arch_settings["depths"]})', optional=['norm[0-3].*'])
        self._is_init = True

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

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(self._not_a_batch(x))
        if fast.applies():
            return fast.forward(self, x)
        x = self.drop_after_embed(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)
