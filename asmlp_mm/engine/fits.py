"""Checks that the parts of a config fit together, before the first step.

A config can build a model whose parts disagree: heads that predict another number of
classes than the dataset has, or a neck, decode head or detector heads written for other
channels or strides than the AS-MLP backbone gives. mmdet, mmseg and mmpretrain then fail
at the first step with a shape error, in the metric after a whole epoch (a class index
beyond the dataset's), or not at all: an AS-MLP with ``patch_size=8`` under heads made for
stride 4 trains and evaluates with anchors that cover a quarter of the image.
:class:`ModelFitsHook` checks both when a run starts and names the config entries.
"""
from typing import List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch import nn

from ..models import ASMLP
from .checkpoint import unwrap


class ConfigMismatchError(ValueError):
    """Parts of a config that do not fit together."""


def class_count_problems(model, classes: Optional[Sequence[str]], loader: str) -> List[str]:
    """The modules of ``model`` whose ``num_classes`` is not the number of ``classes``
    (the dataset's, from ``loader``); the RPN's single objectness class is not one."""
    if not classes:
        return []
    problems = []
    for name, module in model.named_modules():
        count = getattr(module, 'num_classes', None)
        if not isinstance(count, int) or isinstance(count, bool) or not name:
            continue
        if 'rpn' in name.split('.')[0] or type(module).__name__.startswith('RPN'):
            continue
        if count != len(classes):
            problems.append(
                f'model.{name}.num_classes is {count}, but the dataset of {loader} has '
                f'{len(classes)} classes ({", ".join(map(str, classes[:5]))}'
                f'{", ..." if len(classes) > 5 else ""})')
    return problems


def _strides(stride_list) -> List[int]:
    """Strides of mmdet's prior generators ((w, h) pairs) or RoI extractors (ints)."""
    return [s[0] if isinstance(s, (tuple, list)) else int(s) for s in stride_list]


def backbone_fit_problems(model) -> List[str]:
    """Where the neck or heads of ``model`` expect other channels or strides than its
    :class:`ASMLP` backbone gives (nothing to check for other backbones)."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, ASMLP):
        return []
    channels = [backbone.num_features[i] for i in backbone.out_indices]
    strides = [backbone.strides[i] for i in backbone.out_indices]
    problems = []
    neck = getattr(model, 'neck', None)
    neck_in = getattr(neck, 'in_channels', None)
    if isinstance(neck_in, (list, tuple)) and list(neck_in) != channels:
        problems.append(f'model.neck.in_channels is {list(neck_in)}')
    if neck is None:  # mmseg's heads read the backbone's outputs (through a neck: its)
        for head_name in ('decode_head', 'auxiliary_head'):
            for key, head in _parts(model, head_name):
                problems += _decode_head_problems(head, key, channels)
        return _with_backbone(problems, backbone, channels, strides)
    start = getattr(neck, 'start_level', 0)
    level_strides = strides[start:]
    rpn = getattr(model, 'rpn_head', None)
    generator = getattr(rpn, 'prior_generator', None)
    if generator is not None:
        anchors = _strides(generator.strides)[:len(level_strides)]
        if anchors != level_strides[:len(anchors)]:
            problems.append(f'model.rpn_head.anchor_generator.strides begin with {anchors}, '
                            f'where the neck levels have strides {level_strides}: the '
                            f'anchors would not cover the image')
    roi_head = getattr(model, 'roi_head', None)
    for part in ('bbox_roi_extractor', 'mask_roi_extractor'):
        for key, extractor in _parts(roi_head, part, 'model.roi_head.'):
            featmap = _strides(getattr(extractor, 'featmap_strides', []))
            if featmap and featmap != level_strides[:len(featmap)]:
                problems.append(f'{key}.featmap_strides is {featmap}, where the neck '
                                f'levels have strides {level_strides}')
    return _with_backbone(problems, backbone, channels, strides)


def _with_backbone(problems: List[str], backbone, channels, strides) -> List[str]:
    """``problems``, followed by what the backbone gives, if there are any."""
    if not problems:
        return []
    return problems + [f'(model.backbone gives {len(channels)} feature maps, out_indices '
                       f'{list(backbone.out_indices)}, of {channels} channels at strides '
                       f'{strides}: arch, out_indices and patch_size decide them)']


def _parts(parent, name: str, prefix: str = 'model.'):
    """(config key, module) of ``parent.name``: one module, or each of a ModuleList (mmdet's
    cascade stages, mmseg's auxiliary heads)."""
    part = getattr(parent, name, None)
    if part is None:
        return []
    if isinstance(part, nn.ModuleList):
        return [(f'{prefix}{name}.{i}', module) for i, module in enumerate(part)]
    return [(f'{prefix}{name}', part)]


def _decode_head_problems(head, key: str, channels: List[int]) -> List[str]:
    """An mmseg decode head's ``in_index`` and ``in_channels`` against the backbone's."""
    index, in_channels = getattr(head, 'in_index', None), getattr(head, 'in_channels', None)
    if index is None or in_channels is None:
        return []
    indices = list(index) if isinstance(index, (list, tuple)) else [index]
    if any(not -len(channels) <= i < len(channels) for i in indices):
        return [f'{key}.in_index is {index}, beyond the {len(channels)} feature maps '
                f'of the backbone']
    selected = [channels[i] for i in indices]
    if getattr(head, 'input_transform', None) == 'resize_concat':
        selected = [sum(selected)]
    listed = list(in_channels) if isinstance(in_channels, (list, tuple)) else [in_channels]
    if listed != selected:
        return [f'{key}.in_channels is {in_channels}, but its inputs (in_index {index}) '
                f'have {selected if len(selected) > 1 else selected[0]} channels']
    return []


@HOOKS.register_module()
class ModelFitsHook(Hook):
    """Refuses, when a run starts, a config whose parts do not fit together.

    - Before anything runs (``before_run``): the neck (``in_channels``), the mmseg decode
      and auxiliary heads (``in_channels``, ``in_index``), the RPN's anchor strides and
      the RoI extractors' ``featmap_strides`` against the channels and strides of an
      :class:`ASMLP` backbone's outputs (``out_indices``, ``patch_size``, arch).
    - Before training, validation and testing: the ``num_classes`` of every head (and of
      mmpretrain's data preprocessor) against the classes of the dataset (its metainfo);
      mmdet's RPN, which has one objectness class, is left out.

    Raises :class:`ConfigMismatchError` naming the config entries. The configs list it in
    ``custom_hooks``.
    """

    def before_run(self, runner) -> None:
        self._raise(backbone_fit_problems(unwrap(runner.model)))

    def before_train(self, runner) -> None:
        self._check_classes(runner, runner.train_dataloader, 'train_dataloader')

    def before_val(self, runner) -> None:
        self._check_classes(runner, runner.val_dataloader, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check_classes(runner, runner.test_dataloader, 'test_dataloader')

    def _check_classes(self, runner, dataloader, loader: str) -> None:
        metainfo = getattr(getattr(dataloader, 'dataset', None), 'metainfo', None) or {}
        self._raise(class_count_problems(unwrap(runner.model), metainfo.get('classes'),
                                         loader))

    @staticmethod
    def _raise(problems: List[str]) -> None:
        if problems:
            raise ConfigMismatchError('the config does not fit together:\n  ' +
                                      '\n  '.join(problems))
