"""The authors' parameter layouts, and their conversion to :class:`~asmlp_mm.models.ASMLP`'s.

The one home of the key mapping and of the test for the authors' layout. It serves
``tools/model_converters/asmlp_to_mm.py`` (which also infers and verifies the arch) and
``ASMLP``'s ``init_cfg=dict(type='Pretrained')`` (:func:`load_pretrained`), which converts
a file in the authors' layout as it loads it: both give the same weights.

The authors released three code bases, whose checkpoints hold:

* ``cls`` (their own classification code): ``{'model': state_dict}`` with
  ``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``, ``norm.*``
  and the classifier ``head.*``;
* ``det`` (mmdet 2.x): ``state_dict`` with the backbone under ``backbone.`` (one
  ``norm{i}`` per output stage instead of ``norm``), ``neck.*``, ``rpn_head.*``,
  ``roi_head.*``;
* ``seg`` (mmseg 0.x): likewise, with ``decode_head.*`` and ``auxiliary_head.*``.

FPN, RPNHead, ConvFCBBoxHead, FCNMaskHead, UPerHead and FCNHead kept their parameter names
from mmdet 2.x to 3.x and mmseg 0.x to 1.x: the keys outside the backbone stay as they are.
"""
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model import PretrainedInit
from torch import nn

from ..checkpoint_io import (CheckpointMismatchError, CheckpointNotFoundError, check_fits,
                             checkpoint_state_dict, read_checkpoint)

TASKS = ('cls', 'det', 'seg')
#: the parameter groups outside the backbone that keep their names, per task
KEPT_PREFIXES = {
    'det': ('neck.', 'rpn_head.', 'roi_head.'),
    'seg': ('neck.', 'decode_head.', 'auxiliary_head.'),
}
MAX_LISTED = 12

# the authors' names of the token mixer's layers -> ours
_MIXER_NAMES = {'conv1': 'proj_in', 'norm1': 'norm_in', 'conv2_1': 'proj_w',
                'conv2_2': 'proj_h', 'norm2': 'norm_out', 'conv3': 'proj_out'}
# the token mixer of a block in the authors' layout / in ours (with or without a prefix
# such as 'backbone.'); Swin's checkpoints, for one, also have layers.{i}.blocks.{j}
_PUBLISHED_BLOCK = re.compile(r'(^|\.)layers\.\d+\.blocks\.\d+\.axial_shift\.')
_OUR_BLOCK = re.compile(r'(^|\.)stages\.\d+\.blocks\.\d+\.token_mixer\.')


class ConversionError(ValueError):
    """A checkpoint in the authors' layout that cannot be converted (or fitted)."""


def published_key_to_ours(key: str, num_stages: int = 4) -> Optional[str]:
    """Our name of one key of the authors' backbone, or None where no rule covers it
    (keys outside the backbone, e.g. ``head.*``, and unknown ones).

    ``layers.{i}.downsample`` (the end of stage i) becomes ``stages.{i+1}.downsample`` (the
    start of the next stage); the classifier's final ``norm`` is ``norm{num_stages-1}``;
    the token mixer ``axial_shift.{conv1,norm1,conv2_1,conv2_2,norm2,conv3}`` becomes
    ``token_mixer.{proj_in,norm_in,proj_w,proj_h,norm_out,proj_out}``.
    """
    first, _, rest = key.partition('.')
    if not rest:
        return None
    if first == 'patch_embed' or re.fullmatch(r'norm\d+', first):
        return key
    if first == 'norm':
        return f'norm{num_stages - 1}.{rest}'
    match = re.fullmatch(r'layers\.(\d+)\.downsample\.(.+)', key)
    if match:
        return f'stages.{int(match[1]) + 1}.downsample.{match[2]}'
    match = re.fullmatch(r'layers\.(\d+)\.blocks\.(\d+)\.(.+)', key)
    if not match:
        return None
    stage, block, rest = match.groups()
    mixer = re.fullmatch(r'axial_shift\.([^.]+)\.(.+)', rest)
    if mixer:
        if mixer[1] not in _MIXER_NAMES:
            return None
        rest = f'token_mixer.{_MIXER_NAMES[mixer[1]]}.{mixer[2]}'
    elif rest.startswith('axial_shift.'):
        return None
    return f'stages.{stage}.blocks.{block}.{rest}'


def checkpoint_parts(checkpoint) -> Tuple[Dict[str, torch.Tensor], dict, List[str]]:
    """(weights, meta, names of the other top-level entries) of a loaded checkpoint: the
    weights under 'model' (the authors' classifier) or 'state_dict' (mmdet/mmseg, ours),
    or the checkpoint itself when it is a bare state dict; without the 'module.' of a
    model saved inside DistributedDataParallel. A 'meta' that is no dict counts as one of
    the other entries."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    for key in ('model', 'state_dict'):
        if isinstance(checkpoint.get(key), dict):
            others = sorted(str(k) for k in checkpoint
                            if k != key and not (k == 'meta' and meta is checkpoint[k]))
            return _without_ddp_prefix(checkpoint[key]), meta, others
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return _without_ddp_prefix(checkpoint), {}, []
    raise ConversionError(f'no "model" or "state_dict" entry in the checkpoint; top-level '
                          f'keys: {sorted(map(str, checkpoint))[:MAX_LISTED]}')


def _without_ddp_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if state and all(isinstance(k, str) and k.startswith('module.') for k in state):
        return OrderedDict((k[len('module.'):], v) for k, v in state.items())
    return state


def _weights(checkpoint) -> dict:
    try:
        return checkpoint_parts(checkpoint)[0]
    except ConversionError:
        return {}


def is_published_layout(checkpoint) -> bool:
    """Whether a loaded checkpoint (or state dict) holds weights in the layout of the
    authors' released code: token mixers under ``layers.{i}.blocks.{j}.axial_shift``, as
    their classifier, detectors and segmentors have them."""
    return any(isinstance(k, str) and _PUBLISHED_BLOCK.search(k)
               for k in _weights(checkpoint))


def is_our_layout(checkpoint) -> bool:
    """Whether a loaded checkpoint (or state dict) holds AS-MLP weights in this package's
    layout (``stages.{i}.blocks.{j}.token_mixer``) and none in the authors'."""
    keys = [k for k in _weights(checkpoint) if isinstance(k, str)]
    return (any(_OUR_BLOCK.search(k) for k in keys)
            and not any(_PUBLISHED_BLOCK.search(k) for k in keys))


def infer_task(state: Dict[str, torch.Tensor]) -> str:
    """'cls', 'det' or 'seg': which of the authors' code bases saved ``state``."""
    if any(k.startswith(('rpn_head.', 'roi_head.')) for k in state):
        return 'det'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in state):
        return 'seg'
    if any(k.startswith('patch_embed.') for k in state):
        return 'cls'
    raise ConversionError('cannot tell the task from the keys (no patch_embed.*, '
                          'rpn_head.*/roi_head.* or decode_head.*)')


def split_backbone(state: Dict[str, torch.Tensor], task: str):
    """(the backbone's keys without prefix, the other keys) of a state dict in the
    authors' layout."""
    if task == 'cls':
        others = {k: v for k, v in state.items() if k.startswith('head.')}
        backbone = {k: v for k, v in state.items() if not k.startswith('head.')}
        return backbone, others
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    others = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    return backbone, others


def map_other_key(key: str, task: str) -> Optional[str]:
    """Our name of a key of the classifier head / detector / segmentor, or None."""
    if task == 'cls':
        return 'head.fc.' + key[len('head.'):] if key.startswith('head.') else None
    return key if key.startswith(KEPT_PREFIXES[task]) else None


class Converted(NamedTuple):
    """A state dict in the authors' layout, converted (:func:`convert_published`)."""
    state_dict: 'OrderedDict[str, torch.Tensor]'  # our keys: backbone.*, head.fc.*, neck.*
    task: str  # 'cls', 'det' or 'seg'
    unmapped: List[str]  # the source keys no rule covers (left out of state_dict)


def convert_published(state: Dict[str, torch.Tensor], task: Optional[str] = None,
                      num_stages: int = 4) -> Converted:
    """Convert a state dict in the authors' layout (see :func:`checkpoint_parts`) to ours:
    the model of our config of ``task`` (an mmpretrain classifier, an mmdet 3.x detector,
    an mmseg 1.x segmentor) holds the result; ``task`` is inferred from the keys when
    None."""
    if task is not None and task not in TASKS:
        raise ConversionError(f'task must be one of {TASKS}, got {task!r}')
    if not state:
        raise ConversionError('the checkpoint holds no parameters')
    task = task or infer_task(state)
    backbone, others = split_backbone(state, task)
    converted, unmapped = OrderedDict(), []
    for key, value in backbone.items():
        mapped = published_key_to_ours(key, num_stages)
        if mapped is None:
            unmapped.append(key if task == 'cls' else 'backbone.' + key)
        else:
            converted['backbone.' + mapped] = value
    for key, value in others.items():
        mapped = map_other_key(key, task)
        if mapped is None:
            unmapped.append(key)
        else:
            converted[mapped] = value
    return Converted(converted, task, unmapped)


def listed(keys, shapes=None) -> str:
    """At most :data:`MAX_LISTED` of ``keys``, sorted (with their shapes, if given)."""
    keys = sorted(keys)
    text = ', '.join(f'{k} {shapes[k]}' if shapes else k for k in keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return text + (f' ... (+{more} more)' if more > 0 else '')


def split_init_cfg(init_cfg) -> Tuple[Optional[dict], list]:
    """The 'Pretrained' entry of an ``init_cfg`` (None if it has none) and the others;
    ``ValueError`` for two 'Pretrained' entries (which checkpoint would win is not clear)."""
    cfgs = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else init_cfg
    pretrained = [cfg for cfg in cfgs if isinstance(cfg, dict)
                  and cfg.get('type') in ('Pretrained', PretrainedInit)]
    if len(pretrained) > 1:
        raise ValueError(f'init_cfg may hold one Pretrained entry (ASMLP loads one '
                         f'checkpoint), got {len(pretrained)}: {pretrained}')
    others = [cfg for cfg in cfgs if not any(cfg is p for p in pretrained)]
    return (pretrained[0] if pretrained else None), others


def load_pretrained(model: nn.Module, cfg: dict, what: str,
                    optional: Sequence[str] = ()) -> None:
    """Load the checkpoint of a 'Pretrained' init config ``cfg`` into ``model`` (described
    as ``what`` in errors) if it fits: every key of the model but those matching
    ``optional`` present with its shape, no other key (see
    :func:`~asmlp_mm.checkpoint_io.check_fits`). A leading 'module.' (a model saved inside
    DistributedDataParallel) is dropped, as the runner's ``load_from`` does. A checkpoint
    in the layout of the authors' released code (their classifier, mmdet 2.x detector or
    mmseg 0.x segmentor) is converted as it loads, as
    ``tools/model_converters/asmlp_to_mm.py`` converts it, and the log says so."""
    if not cfg.get('checkpoint'):
        raise ValueError(f"init_cfg {cfg} names no checkpoint: "
                         f"dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])")
    checkpoint, prefix = cfg['checkpoint'], cfg.get('prefix') or ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'  # as mmengine's loader
    try:
        loaded = read_checkpoint(checkpoint, map_location='cpu')
    except CheckpointNotFoundError as err:
        raise CheckpointNotFoundError(
            f'{err}: the pretrained weights of ASMLP (init_cfg). Train a classifier '
            f'(configs/asmlp/) or download the published one and put it there (as it '
            f'is, or converted by tools/model_converters/asmlp_to_mm.py), or set its '
            f'path with --cfg-options model.backbone.init_cfg.checkpoint=PATH; '
            f'model.backbone.init_cfg=None trains from random weights') from None
    if is_published_layout(loaded):
        loaded = _converted(loaded, checkpoint, model.num_stages)
    state = checkpoint_state_dict(loaded, checkpoint, prefix)
    if prefix and not state:
        raise ValueError(f'checkpoint {checkpoint!r} has no keys starting with {prefix!r}')
    check_fits(model, state, checkpoint, what, optional=list(optional),
               prefix_option='init_cfg')
    model.load_state_dict(state, strict=False)


def _converted(loaded, checkpoint: str, num_stages: int) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint in the authors' layout, in ours (for
    :func:`load_pretrained`)."""
    layout = f"checkpoint {checkpoint!r} is in the layout of the authors' released code"
    try:
        converted = convert_published(checkpoint_parts(loaded)[0], num_stages=num_stages)
    except ConversionError as err:
        raise CheckpointMismatchError(f'{layout}, but: {err}') from None
    if converted.unmapped:
        raise CheckpointMismatchError(
            f'{layout}, but {len(converted.unmapped)} of its keys have no mapping: '
            f'{listed(converted.unmapped)}; tools/model_converters/asmlp_to_mm.py '
            f'--drop-unmapped converts it without them')
    print_log(f'init_cfg: {layout} ({converted.task}): its weights are converted as they '
              f'load, as tools/model_converters/asmlp_to_mm.py converts them',
              logger='current')
    return converted.state_dict
