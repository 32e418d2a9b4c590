"""AS-MLP: An Axial Shifted MLP Architecture for Vision (Lian et al., ICLR 2022).

A four-stage pyramid of NCHW feature maps. Each block mixes tokens with the axial shift
(channel groups moved along H and along W, then 1x1 convolutions) and mixes channels with a
1x1-convolution MLP; every normalization is GroupNorm with a single group.

Fast path: on CPU (or for any channels-last input) the backbone runs in channels-last
memory: every 1x1 convolution is then one matrix product over the NHWC view of its input
(the (out, in, 1, 1) conv weight viewed as (out, in)), GroupNorm uses its channels-last
kernel, and in inference the GELUs and residual additions write into tensors the block has
just made instead of allocating new ones. The computation, the parameters and the
state-dict layout are those of the plain NCHW modules.
"""
from copy import deepcopy
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, ModuleList
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import axial_shift, check_shift_args

CONNECTIONS = ('parallel', 'serial')


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution; on channels-last input, one matrix product over
    the NHWC view of ``x`` with the conv weight viewed as (out, in)."""
    if not is_channels_last(x):
        return conv(x)
    weight = conv.weight.reshape(conv.weight.shape[0], -1)
    return F.linear(x.permute(0, 2, 3, 1), weight, conv.bias).permute(0, 3, 1, 2)


def may_overwrite(x: torch.Tensor) -> bool:
    """Whether an op may write its result into ``x`` (a tensor the caller has just made):
    nothing records ``x`` for backward, and no tracer, compiler or exporter is watching."""
    if x.requires_grad and torch.is_grad_enabled():
        return False
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; a GELU writes into ``x`` when :func:`may_overwrite` allows."""
    if type(act) is nn.GELU and may_overwrite(x):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, written into ``fresh`` (a tensor the caller has just made and
    that no backward needs) unless a tracer, compiler or exporter is watching."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
            or torch.compiler.is_compiling():
        return fresh + other
    return fresh.add_(other)


def residual(x: torch.Tensor, branch: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(branch)`` with fewer passes: stochastic depth as one fused
    multiply-add (the same random draws as mmcv's ``DropPath``), and in inference the sum
    written into ``branch``."""
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0:
        keep = 1 - drop_path.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.dim() - 1)
        scale = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return torch.addcmul(x, branch, scale.div_(keep))
    branch = drop_path(branch)
    if may_overwrite(branch):
        return branch.add_(x)
    return x + branch


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of an NCHW tensor to a multiple of ``multiple``."""
    pad_h = -x.shape[2] % multiple
    pad_w = -x.shape[3] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` convolution followed by a norm.

    Inputs whose size is not a multiple of the patch size are zero-padded (bottom/right).
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
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.norm = build_norm_layer(norm_cfg, 4 * in_channels)[1]
        self.reduction = conv1x1(4 * in_channels, out_channels, bias=False)

    def forward(self, x):
        x = pad_to_multiple(x, 2)
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                       x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=1)
        return pointwise_conv(self.reduction, self.norm(x))


class AxialShiftMixer(nn.Module):
    """Token mixing by axial shifts.

    ``proj_in -> norm -> act -> [shift along W -> proj_w -> act] (+|->)
    [shift along H -> proj_h -> act] -> norm -> proj_out``, all projections 1x1 convs.

    Args:
        channels (int): Number of channels.
        shift_size (int): Number of channel groups (odd).
        dilation (int): Spacing of the shifts. Defaults to 1.
        padding (str): Padding mode of the shift. Defaults to 'zero'.
        connection (str): 'parallel' sums the W and H branches (as published); 'serial'
            feeds the W branch's output to the H branch. Defaults to 'parallel'.
        norm_cfg (dict): Config of the norm layers.
        act_cfg (dict): Config of the activation.
    """

    def __init__(self, channels: int, shift_size: int = 5, dilation: int = 1,
                 padding: str = 'zero', connection: str = 'parallel',
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        check_shift_args(shift_size, dilation, padding)
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}')
        self.shift_size = shift_size
        self.dilation = dilation
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
        x = activate(self.act, self.norm_in(pointwise_conv(self.proj_in, x)))
        x_w = activate(self.act, pointwise_conv(self.proj_w, self.shift(x, 3)))
        x_h = x_w if self.serial else x
        x_h = activate(self.act, pointwise_conv(self.proj_h, self.shift(x_h, 2)))
        # the activation's output is needed by no backward: sum into it
        x = x_h if self.serial else add_into(x_w, x_h)
        return pointwise_conv(self.proj_out, self.norm_out(x))


class ChannelMLP(nn.Module):
    """1x1 conv (C -> ratio*C) -> act -> dropout -> 1x1 conv (-> C) -> dropout."""

    def __init__(self, channels: int, mlp_ratio: float = 4., drop_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.fc1 = conv1x1(channels, hidden)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = conv1x1(hidden, channels)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x):
        x = self.drop(activate(self.act, pointwise_conv(self.fc1, x)))
        return self.drop(pointwise_conv(self.fc2, x))


class ASMLPBlock(nn.Module):
    """``x + DropPath(AxialShiftMixer(norm(x)))``, then ``x + DropPath(MLP(norm(x)))``.

    Args:
        channels (int): Number of channels.
        mlp_ratio (float): Hidden width of the MLP relative to ``channels``.
        drop_rate (float): Dropout in the MLP.
        drop_path_rate (float): Stochastic depth of both residual branches.
        with_cp (bool): Recompute the block in backward to save memory.
        norm_cfg, act_cfg (dict): Norm and activation configs.
        **mixer_kwargs: shift_size, dilation, padding, connection of the mixer.
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
        x = residual(x, self.token_mixer(self.norm1(x)), self.drop_path)
        return residual(x, self.mlp(self.norm2(x)), self.drop_path)

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
            ``frozen_stages`` stages with their output norms. -1 freezes nothing.
        norm_eval (bool): Keep batch-norm layers (if ``norm_cfg`` uses them) in eval mode
            while training. Defaults to False.
        with_cp (bool): Gradient checkpointing per block. Defaults to False.
        norm_cfg (dict): Norm layer config. Defaults to GroupNorm with one group.
        act_cfg (dict): Activation config. Defaults to GELU.
        init_cfg (dict | list[dict], optional): Initialization config; e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` loads the backbone
            of an mmpretrain AS-MLP classifier checkpoint.
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
                 init_cfg: Optional[Union[dict, List[dict]]] = [
                     dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02,
                          bias=0.),
                     dict(type='Constant', layer=['GroupNorm', 'LayerNorm', '_BatchNorm'],
                          val=1., bias=0.),
                 ]):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        if drop_path_rate is None:
            drop_path_rate = self.arch_settings.get('drop_path_rate', 0.)
        dilations = self._per_stage(dilation, 'dilation')
        check_shift_args(shift_size, 1, padding)
        for d in dilations:
            check_shift_args(shift_size, d, padding)
        if connection not in CONNECTIONS:
            raise ValueError(f'connection must be one of {CONNECTIONS}, got {connection!r}')
        self.out_indices = self._parse_out_indices(out_indices)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an integer in [-1, {self.num_stages}], '
                             f'got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.embed_dims = embed_dims
        self.num_features = [embed_dims * 2**i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, norm_cfg)
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
        depths = list(arch['depths'])
        if len(depths) != cls.num_stages or any(int(d) < 1 for d in depths):
            raise ValueError(f'arch "depths" must list {cls.num_stages} positive block '
                             f'counts, got {arch["depths"]}')
        if int(arch['embed_dims']) < 1:
            raise ValueError(f'arch "embed_dims" must be positive, got {arch["embed_dims"]}')
        return dict(deepcopy(arch), depths=depths)

    @classmethod
    def _per_stage(cls, value, name) -> List[int]:
        if isinstance(value, int):
            return [value] * cls.num_stages
        value = list(value)
        if len(value) != cls.num_stages:
            raise ValueError(f'{name} must be an int or one value per stage '
                             f'({cls.num_stages}), got {value}')
        return value

    @classmethod
    def _parse_out_indices(cls, out_indices) -> List[int]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for i in out_indices:
            if not -cls.num_stages <= i < cls.num_stages:
                raise ValueError(f'out_indices must lie in [0, {cls.num_stages - 1}] '
                                 f'(or negative), got {list(out_indices)}')
            parsed.append(i % cls.num_stages)
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
        mismatched keys. Only the output norms (``norm{i}``) may be absent, since a
        classifier checkpoint has just the final one.
        """
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            return super().init_weights()
        from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_with_prefix
        from ..engine import describe_mismatches, state_dict_mismatches
        checkpoint, prefix = cfg['checkpoint'], cfg.get('prefix')
        if prefix is None:
            state = _load_checkpoint(checkpoint, map_location='cpu')
            state = state.get('state_dict', state)
        else:
            try:
                state = _load_checkpoint_with_prefix(prefix, checkpoint, map_location='cpu')
            except AssertionError:
                raise ValueError(f'checkpoint {checkpoint!r} has no keys starting with '
                                 f'{prefix!r}') from None
        problems = state_dict_mismatches(self.state_dict(), state, optional=['norm[0-3].*'])
        if problems:
            raise ValueError(describe_mismatches(
                checkpoint, problems, f'ASMLP(embed_dims={self.embed_dims}, '
                f'depths={self.arch_settings["depths"]})'))
        self.load_state_dict(state, strict=False)
        self._is_init = True

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        # channels-last inside (see the module docstring); outputs in the input's format
        keep_channels_last = is_channels_last(x) and not x.is_contiguous()
        if x.device.type == 'cpu' or keep_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.drop_after_embed(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out if keep_channels_last else out.contiguous())
        return tuple(outs)
