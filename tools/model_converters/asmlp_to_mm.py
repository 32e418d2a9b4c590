"""Convert a published AS-MLP checkpoint into an asmlp-mm checkpoint, and verify it.

Sources (the authors' three releases) and targets:

* ``cls``: the classification release, ``{'model': state_dict}`` with ``patch_embed.*``,
  ``layers.{i}.blocks.{j}.axial_shift.*``, ``layers.{i}.downsample.*``, ``norm.*``,
  ``head.*`` -> an mmpretrain ``ImageClassifier`` checkpoint (``backbone.*``, ``head.fc.*``).
* ``det``: the mmdet 2.x detection release (``backbone.*`` in the same layout with
  ``backbone.norm{i}``, ``neck.*``, ``rpn_head.*``, ``roi_head.*``) -> mmdet 3.x. The
  neck/RPN/RoI-head parameter names of FPN, RPNHead, ConvFCBBoxHead and FCNMaskHead did not
  change between mmdet 2.x and 3.x; they are kept, and checked against the built model.
* ``seg``: the mmseg 0.x segmentation release (``backbone.*``, ``decode_head.*``,
  ``auxiliary_head.*``) -> mmseg 1.x; UPerHead/FCNHead names are likewise unchanged.

Backbone keys are renamed by :func:`asmlp_mm.models.published.published_key_to_ours`. The
architecture (embedding width, depths, patch size, MLP ratio, output stages) is read from
the tensors. The result is loaded strictly into a model: the one built from ``--config``
when given (a checkpoint of another arch, or one that misses keys, fails with the keys and
shapes that differ), otherwise our config of the detected arch (adjusted to the detected
arch and class count). Every source key is either mapped or reported; unmapped keys stop the
conversion unless ``--drop-unmapped``.

Example::

    python tools/model_converters/asmlp_to_mm.py asmlp_tiny_patch4_shift5_224.pth \\
        checkpoints/asmlp-tiny_8xb128_in1k.pth
    python tools/model_converters/asmlp_to_mm.py cascade_asmlp_t_3x.pth out.pth --task det \\
        --config configs/cascade_mask_rcnn/cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-3x_coco.py
"""
import argparse
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mmengine.config import Config, DictAction  # noqa: E402

from asmlp_mm.analysis import build_model_from_config, output_file_problem  # noqa: E402
from asmlp_mm.compat import weights_only_refusal  # noqa: E402
from asmlp_mm.engine.options import CfgOptionsError, merge_cfg_options  # noqa: E402
from asmlp_mm.models import ASMLP  # noqa: E402
from asmlp_mm.models.published import published_key_to_ours  # noqa: E402

TASKS = ('cls', 'det', 'seg')
# non-backbone parameter groups kept as they are (names unchanged from mmdet 2.x / mmseg 0.x)
KEPT_PREFIXES = {
    'det': ('neck.', 'rpn_head.', 'roi_head.'),
    'seg': ('neck.', 'decode_head.', 'auxiliary_head.'),
}
NUM_STAGES = ASMLP.num_stages
MAX_LISTED = 12


class ConversionError(ValueError):
    """The source checkpoint cannot be converted, or does not fit the target model."""


# ----------------------------------------------------------------------------- reading
def load_source(path: str, unsafe: bool = False) -> dict:
    """Read a checkpoint file.

    Args:
        path (str): The published checkpoint.
        unsafe (bool): Unpickle arbitrary objects (``weights_only=False``). Only for files
            you trust, e.g. a training checkpoint whose ``config`` entry is a yacs node.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=not unsafe)
    except Exception as err:  # torch raises several types for unreadable files
        # an object it refuses to rebuild ('Unsupported global: ...'), or bytes that are no
        # pickle of a checkpoint ('Unsupported operand ...')
        first_line = weights_only_refusal(err)
        refused = first_line.startswith('Unsupported global')
        hint = '' if unsafe or not refused else (
            '\nIf it is a trusted training checkpoint that pickles other Python objects, '
            'pass --unsafe-load.')
        raise ConversionError(f'cannot load {path!r} as a PyTorch checkpoint: '
                              f'{type(err).__name__}: {first_line}{hint}') from err


def split_checkpoint(ckpt) -> Tuple[Dict[str, torch.Tensor], dict, List[str]]:
    """(state dict, meta, names of dropped top-level entries) of a loaded checkpoint."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f'expected a dict checkpoint, got {type(ckpt).__name__}')
    meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
    for key in ('model', 'state_dict'):
        if isinstance(ckpt.get(key), dict):
            dropped = sorted(k for k in ckpt if k not in (key, 'meta') or
                             k == 'meta' and not isinstance(ckpt[k], dict))
            return _without_ddp_prefix(ckpt[key]), meta, dropped
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return _without_ddp_prefix(ckpt), {}, []
    raise ConversionError(f'no "model" or "state_dict" entry in the checkpoint; top-level '
                          f'keys: {sorted(ckpt)[:MAX_LISTED]}')


def _without_ddp_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` without the 'module.' of a model saved inside DistributedDataParallel."""
    if state and all(isinstance(k, str) and k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return state


def check_destination(src: str, dst: str) -> None:
    """Refuse a ``dst`` that cannot be written (a folder, no name, no writable folder) or is
    the source itself (which would be replaced)."""
    problem = output_file_problem(dst)
    if problem:
        raise ConversionError(problem)
    if osp.exists(dst) and osp.exists(src) and osp.samefile(src, dst):
        raise ConversionError(f'{dst!r} is the source checkpoint; writing the result there '
                              'would replace it')


def check_not_converted(state: Dict[str, torch.Tensor]) -> None:
    """Refuse a state dict that is already in this package's layout."""
    ours = re.compile(r'(^|\.)stages\.\d+\.blocks\.\d+\.')
    if any(ours.search(k) for k in state) and not any('layers.' in k for k in state):
        raise ConversionError('the checkpoint is already in the asmlp-mm layout '
                              '(stages.*.blocks.*, not the published layers.*.blocks.*): '
                              'no conversion needed, load it as it is')


def infer_task(state: Dict[str, torch.Tensor]) -> str:
    """'cls', 'det' or 'seg', from the key prefixes."""
    if any(k.startswith(('rpn_head.', 'roi_head.')) for k in state):
        return 'det'
    if any(k.startswith(('decode_head.', 'auxiliary_head.')) for k in state):
        return 'seg'
    if any(k.startswith('patch_embed.') for k in state):
        return 'cls'
    raise ConversionError('cannot tell the task from the keys (no patch_embed.*, '
                          'rpn_head.*/roi_head.* or decode_head.*); pass --task')


def split_backbone(state: Dict[str, torch.Tensor], task: str):
    """(backbone keys without prefix, the other keys) in the published layout."""
    if task == 'cls':
        others = {k: v for k, v in state.items() if k.startswith('head.')}
        backbone = {k: v for k, v in state.items() if not k.startswith('head.')}
        return backbone, others
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    others = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    return backbone, others


# ----------------------------------------------------------------------------- arch
def _block_indices(backbone: Dict[str, torch.Tensor], stage: int) -> List[int]:
    pattern = re.compile(rf'layers\.{stage}\.blocks\.(\d+)\.')
    return sorted({int(m.group(1)) for k in backbone for m in [pattern.match(k)] if m})


def infer_arch(backbone: Dict[str, torch.Tensor], task: str) -> dict:
    """The architecture a published backbone state dict describes.

    Returns a dict with ``embed_dims``, ``depths``, ``patch_size``, ``in_channels``,
    ``mlp_ratio``, ``out_indices`` and ``preset`` ('tiny', 'small', 'base' or None).
    """
    proj = backbone.get('patch_embed.proj.weight')
    if proj is None or proj.dim() != 4:
        raise ConversionError('no 4-D "patch_embed.proj.weight" in the backbone: not an '
                              'AS-MLP checkpoint (or --task names the wrong task)')
    embed_dims, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    stages = {int(m.group(1)) for k in backbone for m in [re.match(r'layers\.(\d+)\.', k)]
              if m}
    if stages != set(range(NUM_STAGES)):
        raise ConversionError(f'AS-MLP has {NUM_STAGES} stages; the checkpoint has blocks '
                              f'in layers {sorted(stages)}')
    depths = []
    for i in range(NUM_STAGES):
        blocks = _block_indices(backbone, i)
        if not blocks:
            raise ConversionError(f'stage {i} (layers.{i}.blocks.*) has no blocks')
        if blocks != list(range(len(blocks))):
            missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
            raise ConversionError(f'stage {i} misses blocks {missing} (has {blocks})')
        depths.append(len(blocks))
    fc1 = backbone.get('layers.0.blocks.0.mlp.fc1.weight')
    if fc1 is None:
        raise ConversionError('missing "layers.0.blocks.0.mlp.fc1.weight": cannot tell the '
                              'MLP ratio')
    if task == 'cls':
        out_indices = [NUM_STAGES - 1]
    else:
        out_indices = sorted(int(k[4]) for k in backbone if re.fullmatch(r'norm\d\.weight', k))
        if not out_indices:
            raise ConversionError('no backbone.norm{i}.weight: a detection/segmentation '
                                  'backbone has one output norm per stage it outputs')
    arch = dict(embed_dims=int(embed_dims), depths=depths, patch_size=int(patch_size),
                in_channels=int(in_channels), mlp_ratio=fc1.shape[0] / embed_dims,
                out_indices=out_indices)
    arch['preset'] = next((name for name in ('tiny', 'small', 'base')
                           if ASMLP.arch_zoo[name]['embed_dims'] == arch['embed_dims']
                           and ASMLP.arch_zoo[name]['depths'] == depths), None)
    return arch


def describe_arch(arch: dict) -> str:
    name = f'AS-MLP-{arch["preset"][0].upper()}' if arch.get('preset') else 'custom AS-MLP'
    return (f'{name}: embed_dims={arch["embed_dims"]}, depths={arch["depths"]}, '
            f'patch_size={arch["patch_size"]}, in_channels={arch["in_channels"]}, '
            f'mlp_ratio={arch["mlp_ratio"]:g}, out_indices={arch["out_indices"]}')


# ----------------------------------------------------------------------------- keys
def map_backbone_key(key: str) -> Optional[str]:
    """Our name of one published backbone key, or None when no rule covers it."""
    try:
        return published_key_to_ours(key, NUM_STAGES)
    except (KeyError, IndexError, ValueError):
        return None


def map_other_key(key: str, task: str) -> Optional[str]:
    """Our name of a classification head / detector / segmentor key, or None."""
    if task == 'cls':
        return 'head.fc.' + key[len('head.'):] if key.startswith('head.') else None
    return key if key.startswith(KEPT_PREFIXES[task]) else None


def convert_state_dict(state: Dict[str, torch.Tensor], task: str):
    """(converted state dict, unmapped source keys, arch) of a published state dict."""
    if not state:
        raise ConversionError('the checkpoint holds no parameters')
    backbone, others = split_backbone(state, task)
    arch = infer_arch(backbone, task)
    converted, unmapped = OrderedDict(), []
    for key, value in backbone.items():
        mapped = map_backbone_key(key)
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
    return converted, unmapped, arch


# ----------------------------------------------------------------------------- target
def detector_kind(state: Dict[str, torch.Tensor]) -> str:
    """'cascade_mask_rcnn' when the RoI head has per-stage heads, else 'mask_rcnn'."""
    cascade = any(k.startswith('roi_head.bbox_head.0.') for k in state)
    return 'cascade_mask_rcnn' if cascade else 'mask_rcnn'


def default_config(task: str, arch: dict, state: Dict[str, torch.Tensor]) -> Optional[str]:
    """Our config for the detected task and arch, or None when there is none."""
    preset = arch['preset']
    if task == 'cls':
        name = f'asmlp/asmlp-{preset or "tiny"}_8xb128_in1k.py'
    elif preset is None:
        return None
    elif task == 'det':
        kind = detector_kind(state)
        prefix = kind.replace('_', '-')
        name = f'{kind}/{prefix}_asmlp-{preset}_fpn_ms-crop-3x_coco.py'
    else:
        name = f'upernet/upernet_asmlp-{preset}_8xb2-160k_ade20k-512x512.py'
    path = osp.join(ROOT, 'configs', name)
    return path if osp.isfile(path) else None


def fit_config_to_checkpoint(cfg: Config, arch: dict, converted: dict):
    """Make our default classification config match the checkpoint's arch and classes."""
    cfg.model.backbone.update(
        arch=dict(embed_dims=arch['embed_dims'], depths=arch['depths']),
        patch_size=arch['patch_size'], in_channels=arch['in_channels'],
        mlp_ratio=arch['mlp_ratio'], out_indices=arch['out_indices'])
    fc = converted.get('head.fc.weight')
    if fc is not None:
        cfg.model.head.update(num_classes=fc.shape[0], in_channels=fc.shape[1])


def build_target(task: str, arch: dict, converted: dict, state: dict,
                 config: Optional[str], cfg_options: Optional[dict]):
    """(model to load into, description, whether only the backbone can be checked)."""
    fitted = config is None
    config = config or default_config(task, arch, state)
    if config is None:
        backbone = ASMLP(dict(embed_dims=arch['embed_dims'], depths=arch['depths']),
                         in_channels=arch['in_channels'], patch_size=arch['patch_size'],
                         mlp_ratio=arch['mlp_ratio'], out_indices=arch['out_indices'])
        model = torch.nn.Module()
        model.backbone = backbone
        return model, ('an ASMLP backbone of the detected arch (no config of ours for it: '
                       'pass --config to check the neck and heads too)'), True
    if not osp.isfile(config):
        raise FileNotFoundError(f'config {config!r} does not exist')
    cfg = merge_cfg_options(Config.fromfile(config), cfg_options, config)
    if fitted and task == 'cls':
        fit_config_to_checkpoint(cfg, arch, converted)
    if 'backbone' not in cfg.model or cfg.model.backbone.get('type') != 'ASMLP':
        raise ConversionError(f'{config}: model.backbone is not an ASMLP')
    return build_model_from_config(cfg), osp.relpath(config, os.getcwd()), False


def _listed(keys, shapes=None) -> str:
    keys = sorted(keys)
    text = ', '.join(f'{k} {shapes[k]}' if shapes else k for k in keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return text + (f' ... (+{more} more)' if more > 0 else '')


def check_fits(converted: dict, model: torch.nn.Module, arch: dict, target: str,
               only_backbone: bool = False):
    """Raise :class:`ConversionError` naming every difference; else load strictly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()
           if not only_backbone or k.startswith('backbone.')}
    missing = set(expected) - set(got)
    unexpected = set(got) - set(expected)
    wrong = {k for k in set(expected) & set(got) if expected[k] != got[k]}
    if missing or unexpected or wrong:
        lines = [f'the converted checkpoint does not fit {target}.',
                 f'  checkpoint arch: {describe_arch(arch)}']
        backbone = getattr(model, 'backbone', None)
        if isinstance(backbone, ASMLP):
            lines.append(f'  model backbone: embed_dims={backbone.embed_dims}, depths='
                         f'{[len(s.blocks) for s in backbone.stages]}, '
                         f'out_indices={backbone.out_indices}')
        if missing:
            lines.append(f'  missing in the checkpoint ({len(missing)}): '
                         f'{_listed(missing, expected)}')
        if unexpected:
            lines.append(f'  not in the model ({len(unexpected)}): {_listed(unexpected, got)}')
        if wrong:
            lines.append(f'  shape mismatch ({len(wrong)}): ' + ', '.join(
                f'{k} checkpoint {got[k]} vs model {expected[k]}'
                for k in sorted(wrong)[:MAX_LISTED]))
        raise ConversionError('\n'.join(lines))
    model.load_state_dict({k: converted[k] for k in got}, strict=True)


# ----------------------------------------------------------------------------- meta
def convert_meta(meta: dict, src: str, task: str, arch: dict, unmapped: List[str]) -> dict:
    """Our checkpoint meta: provenance, arch, and ``dataset_meta`` from CLASSES/PALETTE."""
    out = dict(converted_from=osp.basename(src), task=task,
               arch={k: v for k, v in arch.items()}, dropped_keys=list(unmapped))
    dataset_meta = {name.lower(): meta[name] for name in ('CLASSES', 'PALETTE')
                    if meta.get(name) is not None}
    if isinstance(meta.get('dataset_meta'), dict):
        dataset_meta.update(meta['dataset_meta'])
    if dataset_meta:
        out['dataset_meta'] = dataset_meta
    for key in ('mmdet_version', 'mmseg_version', 'mmcv_version', 'epoch', 'iter'):
        if key in meta:
            out[f'source_{key}'] = meta[key]
    return out


# ----------------------------------------------------------------------------- main
def convert(src: str, dst: str, task: Optional[str] = None, config: Optional[str] = None,
            cfg_options: Optional[dict] = None, drop_unmapped: bool = False,
            unsafe_load: bool = False, log=print) -> dict:
    """Convert ``src`` to ``dst`` and verify it; return a summary dict.

    Args:
        src (str): Published checkpoint.
        dst (str): Output path (folders are created).
        task (str, optional): 'cls', 'det' or 'seg'; inferred from the keys when None.
        config (str, optional): Our config the result must load into strictly. When None,
            our config of the detected arch is used (classification: adjusted to the
            detected arch and classes).
        cfg_options (dict, optional): Overrides merged into ``config``.
        drop_unmapped (bool): Drop source keys no rule maps instead of failing.
        unsafe_load (bool): Load ``src`` with ``weights_only=False``.
        log (callable): Receives the report lines.
    """
    if task is not None and task not in TASKS:
        raise ConversionError(f'task must be one of {TASKS}, got {task!r}')
    check_destination(src, dst)
    state, meta, dropped_entries = split_checkpoint(load_source(src, unsafe_load))
    check_not_converted(state)
    task = task or infer_task(state)
    converted, unmapped, arch = convert_state_dict(state, task)
    log(f'task: {task}; arch: {describe_arch(arch)}')
    log(f'{len(state)} source keys -> {len(converted)} keys')
    if dropped_entries:
        log(f'dropped top-level entries (training state): {dropped_entries}')
    if unmapped:
        message = f'{len(unmapped)} source keys have no mapping: {_listed(unmapped)}'
        if not drop_unmapped:
            raise ConversionError(message + '\n(pass --drop-unmapped to drop them)')
        log('dropped ' + message)
    model, target, only_backbone = build_target(task, arch, converted, state, config,
                                                cfg_options)
    check_fits(converted, model, arch, target, only_backbone=only_backbone)
    log(f'verified: loads strictly into {target}')
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=converted,
                    meta=convert_meta(meta, src, task, arch, unmapped)), dst)
    log(f'saved {dst}')
    return dict(task=task, arch=arch, unmapped=unmapped, target=target,
                num_keys=len(converted))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a published AS-MLP checkpoint (classification, mmdet 2.x '
        'detection or mmseg 0.x segmentation release) to asmlp-mm (mmpretrain 1.x / '
        'mmdet 3.x / mmseg 1.x) and verify that it loads strictly.')
    parser.add_argument('src', help='published checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--task', choices=TASKS, help='default: inferred from the keys')
    parser.add_argument('--config', help='our config the result must load into '
                        '(default: ours for the detected arch)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides of --config, e.g. model.backbone.shift_size=3')
    parser.add_argument('--drop-unmapped', action='store_true',
                        help='drop source keys no rule maps instead of failing')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load SRC with weights_only=False (trusted files only)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args.src, args.dst, args.task, args.config, args.cfg_options,
                args.drop_unmapped, args.unsafe_load)
    except (ConversionError, FileNotFoundError, CfgOptionsError) as err:
        raise SystemExit(f'error: {err}')


if __name__ == '__main__':
    main()
