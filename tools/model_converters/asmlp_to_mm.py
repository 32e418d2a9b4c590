"""Convert a published AS-MLP checkpoint into an asmlp-mm checkpoint, and verify it.

Sources (the authors' three releases) and targets:

* ``cls``: the classification release (``{'model': state_dict, 'config': <yacs node>,
  'optimizer', 'lr_scheduler', 'amp', ...}``) -> an mmpretrain ``ImageClassifier``
  checkpoint (``backbone.*``, ``head.fc.*``).
* ``det``: the mmdet 2.x detection release (``backbone.*``, ``neck.*``, ``rpn_head.*``,
  ``roi_head.*``) -> mmdet 3.x.
* ``seg``: the mmseg 0.x segmentation release (``backbone.*``, ``decode_head.*``,
  ``auxiliary_head.*``) -> mmseg 1.x.

The file is read by :func:`asmlp_mm.checkpoint_io.load_local_checkpoint`, which unpickles
tensors and plain data only (the yacs config of the classification release becomes an
inert placeholder; like the other training entries, it is dropped). The keys are converted
by :func:`asmlp_mm.models.weights.convert_published`, as ``ASMLP``'s ``init_cfg`` converts
such a file on load. The architecture (embedding width, depths, patch size, MLP ratio,
output stages) is read from the tensors. The result is loaded strictly into a model: the
one built from ``--config`` when given (a checkpoint of another arch, or one that misses
keys, fails with the keys and shapes that differ), otherwise our config of the detected
arch (adjusted to the detected arch and class count). Every source key is either mapped or
reported; unmapped keys stop the conversion unless ``--drop-unmapped``.

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
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.config import Config, DictAction

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.checkpoint_io import (CheckpointError, describe_mismatches, foreign_objects,
                                    load_local_checkpoint, state_dict_mismatches)
from asmlp_mm.engine.cli import load_config, output_file_problem
from asmlp_mm.models import ASMLP
from asmlp_mm.models.weights import (MAX_LISTED, TASKS, ConversionError, checkpoint_parts,
                                     convert_published, infer_task, is_our_layout, listed,
                                     split_backbone)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
NUM_STAGES = ASMLP.num_stages


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
    if is_our_layout(state):
        raise ConversionError('the checkpoint is already in the asmlp-mm layout '
                              '(stages.*.blocks.*, not the published layers.*.blocks.*): '
                              'no conversion needed, load it as it is')


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


def convert_state_dict(state: Dict[str, torch.Tensor], task: Optional[str] = None):
    """(converted state dict, unmapped source keys, arch, task) of a published state dict;
    ``task`` is inferred from the keys when None."""
    if task is None and state:
        try:
            task = infer_task(state)
        except ConversionError as err:
            raise ConversionError(f'{err}; pass --task') from None
    converted = convert_published(state, task, NUM_STAGES)
    arch = infer_arch(split_backbone(state, converted.task)[0], converted.task)
    return converted.state_dict, converted.unmapped, arch, converted.task


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
    cfg = load_config(config, cfg_options)
    if fitted and task == 'cls':
        fit_config_to_checkpoint(cfg, arch, converted)
    if 'backbone' not in cfg.model or cfg.model.backbone.get('type') != 'ASMLP':
        raise ConversionError(f'{config}: model.backbone is not an ASMLP')
    return build_model_from_config(cfg), osp.relpath(config, os.getcwd()), False


def load_verified(converted: dict, model: torch.nn.Module, arch: dict, target: str,
                  src: str, only_backbone: bool = False):
    """Load ``converted`` (the keys of ``src`` converted) strictly into ``model``, or raise
    :class:`ConversionError` with the differences
    (:func:`asmlp_mm.checkpoint_io.state_dict_mismatches`) after the checkpoint's arch and
    the model's."""
    state = {k: v for k, v in converted.items()
             if not only_backbone or k.startswith('backbone.')}
    problems = state_dict_mismatches(model.state_dict(), state)
    if problems:
        archs = f'keys as converted; checkpoint arch: {describe_arch(arch)}'
        backbone = getattr(model, 'backbone', None)
        if isinstance(backbone, ASMLP):
            archs += (f'\n  model backbone: embed_dims={backbone.embed_dims}, depths='
                      f'{[len(s.blocks) for s in backbone.stages]}, '
                      f'out_indices={backbone.out_indices}')
        raise ConversionError(describe_mismatches(src, problems, target,
                                                  limit=MAX_LISTED, hint=archs))
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- meta
def plain(value):
    """``value`` with its numpy arrays and scalars as lists and Python numbers (in dicts,
    lists and tuples too): what ``torch.load(weights_only=True)`` reads without help."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (list if isinstance(value, list) else tuple)(plain(v) for v in value)
    return value


def convert_meta(meta: dict, src: str, task: str, arch: dict, unmapped: List[str],
                 log=print) -> dict:
    """Our checkpoint meta: provenance, arch, and ``dataset_meta`` from CLASSES/PALETTE.

    Values become plain data (:func:`plain`); one that holds objects the reader left out
    (e.g. an mmcv ``Config``) is left out, and said."""
    out = dict(converted_from=osp.basename(src), task=task,
               arch={k: v for k, v in arch.items()}, dropped_keys=list(unmapped))
    # (where in the source, whether it goes into dataset_meta, its name there, value)
    entries = [(f'meta[{name!r}]', True, name.lower(), meta.get(name))
               for name in ('CLASSES', 'PALETTE')]
    if isinstance(meta.get('dataset_meta'), dict):
        entries += [(f"meta['dataset_meta'][{key!r}]", True, key, value)
                    for key, value in meta['dataset_meta'].items()]
    entries += [(f'meta[{key!r}]', False, f'source_{key}', meta.get(key)) for key in (
        'mmdet_version', 'mmseg_version', 'mmcv_version', 'epoch', 'iter')]
    dataset_meta = {}
    for where, in_dataset_meta, name, value in entries:
        if value is None:
            continue
        foreign = foreign_objects(value)
        if foreign:
            log(f'left out {where}: it holds objects that were not unpickled '
                f'({", ".join(sorted({pickled for _, pickled in foreign}))})')
            continue
        (dataset_meta if in_dataset_meta else out)[name] = plain(value)
    if dataset_meta:
        out['dataset_meta'] = dataset_meta
    return out


# ----------------------------------------------------------------------------- main
def convert(src: str, dst: str, task: Optional[str] = None, config: Optional[str] = None,
            cfg_options: Optional[dict] = None, drop_unmapped: bool = False,
            log=print) -> dict:
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
        log (callable): Receives the report lines.
    """
    if task is not None and task not in TASKS:
        raise ConversionError(f'task must be one of {TASKS}, got {task!r}')
    check_destination(src, dst)
    state, meta, dropped_entries = checkpoint_parts(load_local_checkpoint(src, 'cpu'))
    check_not_converted(state)
    converted, unmapped, arch, task = convert_state_dict(state, task)
    log(f'task: {task}; arch: {describe_arch(arch)}')
    log(f'{len(state)} source keys -> {len(converted)} keys')
    if dropped_entries:
        log(f'dropped top-level entries (training state): {dropped_entries}')
    if unmapped:
        message = f'{len(unmapped)} source keys have no mapping: {listed(unmapped)}'
        if not drop_unmapped:
            raise ConversionError(message + '\n(pass --drop-unmapped to drop them)')
        log('dropped ' + message)
    model, target, only_backbone = build_target(task, arch, converted, state, config,
                                                cfg_options)
    load_verified(converted, model, arch, target, src, only_backbone=only_backbone)
    log(f'verified: loads strictly into {target}')
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=converted,
                    meta=convert_meta(meta, src, task, arch, unmapped, log)), dst)
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
    # deprecated: every file is read safely now (objects other than weights and plain
    # data are left out), so there is nothing left to allow
    parser.add_argument('--unsafe-load', action='store_true', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.unsafe_load:
        print('--unsafe-load is deprecated and does nothing: every checkpoint is read '
              'without unpickling objects other than weights and plain data',
              file=sys.stderr)
    try:
        convert(args.src, args.dst, args.task, args.config, args.cfg_options,
                args.drop_unmapped)
    except (ValueError, CheckpointError, FileNotFoundError) as err:  # ConversionError too
        raise SystemExit(f'error: {err}')


if __name__ == '__main__':
    main()
