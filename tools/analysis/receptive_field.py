"""Effective receptive field (ERF) of AS-MLP next to another model, as a PNG grid.

For every stage output of a backbone, the ERF is the gradient of the centre output pixel
(its channels through a ReLU, then summed) with respect to the input image, in absolute
value, summed over the input channels and averaged over a few random inputs (Luo et al.,
2016; the ReLU as in RepLKNet's ERF code: right after a per-pixel LayerNorm, as Swin's and
ConvNeXt's stage outputs are, the plain channel sum is constant and has no gradient). One
row per model, one column per stage; each panel shows the map on a log scale and the side
of the smallest centred square holding ``--mass`` of the gradient, as a fraction of the
image side.

Models are a config path (its ``model.backbone`` is used; a toolbox's own config works too,
e.g. ``mmpretrain::resnet/resnet18_8xb32_in1k.py``) or an mmpretrain model name such as
``resnet50_8xb32_in1k`` or ``convnext-tiny_32xb128_in1k``. Backbones are set to output
every stage as a feature map where they take the options (``out_indices``,
``gap_before_final_norm=False``, ``out_type='featmap'``). Without checkpoints the weights
are random (the ERF then reflects the architecture alone), drawn from ``--seed``.

Example::

    python tools/analysis/receptive_field.py --compare resnet50_8xb32_in1k \\
        --asmlp-checkpoint asmlp-tiny.pth --compare-checkpoint resnet50.pth --out erf.png
"""
import argparse
import inspect
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from mmengine.config import Config, DictAction
from mmengine.registry import MODELS

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.checkpoint_io import CheckpointError, load_fitting_weights
from asmlp_mm.engine.cli import load_config as load_any_config
from asmlp_mm.engine.cli import output_file_problem

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_ASMLP = osp.join(ROOT, 'configs', 'asmlp', 'asmlp-tiny_8xb128_in1k.py')


# options that make a backbone return every stage as an NCHW map, where it takes them
FEATURE_MAP_OPTIONS = dict(out_indices=(0, 1, 2, 3), gap_before_final_norm=False,
                           out_type='featmap')
# the output norms of stages, which those options add to a classifier's backbone
# (ASMLP's, ConvNeXt's and Swin's norm0..norm3)
OUTPUT_NORMS = 'norm[0-9].*'


def load_config(spec: str, cfg_options: Optional[dict] = None) -> Config:
    """The config of a config path, a toolbox's config or an mmpretrain model name, whose
    model has a backbone."""
    cfg = load_any_config(spec, cfg_options, model_names=True)
    if 'backbone' not in cfg.model:
        raise ValueError(f'{spec}: the model has no backbone')
    return cfg


def feature_map_overrides(cfg: Config) -> dict:
    """The :data:`FEATURE_MAP_OPTIONS` the config's backbone class accepts."""
    with MODELS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        backbone_cls = registry.get(cfg.model.backbone.type)
    if backbone_cls is None:
        return {}
    accepted = inspect.signature(backbone_cls.__init__).parameters
    return {k: v for k, v in FEATURE_MAP_OPTIONS.items() if k in accepted}


def load_backbone(spec: str, checkpoint: Optional[str] = None,
                  cfg_options: Optional[dict] = None) -> nn.Module:
    """The backbone of a config (any toolbox) or of an mmpretrain model name, in eval
    mode, set to output every stage as a feature map where it can."""
    cfg = load_config(spec, cfg_options)
    cfg.model.backbone.update(feature_map_overrides(cfg))
    model = build_model_from_config(cfg)
    backbone = model.backbone
    if checkpoint:  # the backbone's weights must all be there, with their shapes
        # but for the output norms of the stages that the overrides add: a classifier
        # checkpoint has only the last stage's
        kept = load_fitting_weights(backbone, checkpoint, f'the backbone of {spec}',
                                    prefix='backbone.', optional=[OUTPUT_NORMS])
        if kept:
            print(f'{spec}: the checkpoint has no {", ".join(sorted(kept))} (output norms '
                  f'of the stages a classifier does not output); they keep their initial '
                  f'values', file=sys.stderr)
    for param in backbone.parameters():
        param.requires_grad_(False)
    backbone.eval()  # some backbones' train() returns None
    return backbone


def stage_outputs(backbone: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The backbone's NCHW outputs as a list (a single tensor becomes one stage)."""
    outs = backbone(x)
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    for out in outs:
        if out.dim() != 4:
            raise ValueError(f'expected NCHW stage outputs, got shape {tuple(out.shape)}')
    return outs


def effective_receptive_field(backbone: nn.Module, shape: Sequence[int] = (224, 224),
                              num_inputs: int = 4, seed: int = 0) -> List[np.ndarray]:
    """One (H, W) map per stage output: mean over random inputs of the absolute gradient
    of the centre output pixel (ReLU, summed over channels) w.r.t. the input, summed over
    the input channels. A map that is zero everywhere (no input reached the centre pixel,
    or its channels were all negative for every input) raises ``ValueError``.

    Args:
        backbone (nn.Module): Maps an NCHW image to a tuple of NCHW stage outputs.
        shape (Sequence[int]): Input (H, W).
        num_inputs (int): Number of random (standard normal) inputs to average over.
        seed (int): Seed of the inputs.
    """
    if num_inputs < 1:
        raise ValueError(f'num_inputs must be >= 1, got {num_inputs}')
    generator = torch.Generator().manual_seed(seed)
    in_channels = _in_channels(backbone)
    total = None
    for _ in range(num_inputs):
        x = torch.randn(1, in_channels, *shape, generator=generator).requires_grad_(True)
        outs = stage_outputs(backbone, x)
        centres = [out[0, :, out.shape[2] // 2, out.shape[3] // 2].relu().sum()
                   for out in outs]
        grads = [torch.autograd.grad(c, x, retain_graph=i < len(centres) - 1)[0]
                 for i, c in enumerate(centres)]
        maps = [g[0].abs().sum(0).numpy() for g in grads]
        total = maps if total is None else [t + m for t, m in zip(total, maps)]
    zero = [i for i, t in enumerate(total) if not t.any()]
    if zero:
        raise ValueError(f'the gradient of the centre pixel is zero everywhere at stage(s) '
                         f'{zero} for all {num_inputs} inputs: no receptive field to measure '
                         f'(try more --num-inputs or another --seed)')
    return [t / num_inputs for t in total]


def _in_channels(backbone: nn.Module) -> int:
    for module in backbone.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module.in_channels if isinstance(module, nn.Conv2d) \
                else module.in_features
    return 3


def centred_square_fraction(erf: np.ndarray, mass: float = 0.5) -> float:
    """Side of the smallest square centred on the middle pixel holding ``mass`` of the
    map's total, as a fraction of the image's longer side (1.0 if even the whole image
    holds less)."""
    if not 0 < mass <= 1:
        raise ValueError(f'mass must lie in (0, 1], got {mass}')
    height, width = erf.shape
    total = erf.sum()
    if not total > 0:
        raise ValueError('the map holds no gradient: it has no centred square')
    cy, cx = height // 2, width // 2
    for radius in range(max(height, width)):
        window = erf[max(cy - radius, 0):cy + radius + 1, max(cx - radius, 0):cx + radius + 1]
        if window.sum() >= mass * total:
            return min(2 * radius + 1, max(height, width)) / max(height, width)
    return 1.0


def plot_grid(rows: List[List[np.ndarray]], names: List[str], out: str,
              mass: float = 0.5) -> str:
    """Save a grid (one row per model, one column per stage) of log-scaled ERF maps."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                             figsize=(2.6 * columns, 2.8 * len(rows)))
    for r, (maps, name) in enumerate(zip(rows, names)):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis('off')
            if c >= len(maps):
                continue
            erf = maps[c]
            shown = np.log10(erf / max(erf.max(), 1e-30) + 1e-6)
            ax.imshow(shown, cmap='viridis', vmin=-6, vmax=0)
            ax.set_title(f'{name}\nstage {c}: {mass:.0%} in '
                         f'{centred_square_fraction(erf, mass):.2f}', fontsize=8)
    fig.suptitle('Effective receptive field (log10 of normalized |d centre / d input|)',
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100, format=osp.splitext(out)[1][1:])
    plt.close(fig)
    return out


def check_output(parser: argparse.ArgumentParser, out: str) -> str:
    """``out``, refused (before any work) unless it can be written as an image in a format
    matplotlib writes."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.backend_bases import FigureCanvasBase
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    problem = output_file_problem(out, ['.' + f for f in formats])
    if problem:
        parser.error(f'--out {problem}')
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Effective receptive field of AS-MLP vs another model (PNG grid)')
    parser.add_argument('--asmlp', default=DEFAULT_ASMLP, help='AS-MLP config')
    parser.add_argument('--asmlp-checkpoint', help='weights of the AS-MLP model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides of the AS-MLP config')
    parser.add_argument('--compare', nargs='*', default=['resnet50_8xb32_in1k'],
                        help='models to compare with: config paths or mmpretrain model '
                        'names (none: AS-MLP alone)')
    parser.add_argument('--compare-checkpoint', nargs='*', default=[],
                        help='weights of the --compare models, in the same order')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'), help='input size')
    parser.add_argument('--num-inputs', type=int, default=4,
                        help='random inputs to average over')
    parser.add_argument('--mass', type=float, default=0.5,
                        help='gradient share whose centred square side is reported')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='erf.png', help='output PNG')
    args = parser.parse_args(argv)
    if len(args.compare_checkpoint) > len(args.compare):
        parser.error('more --compare-checkpoint than --compare models')
    if min(args.shape) < 1:
        parser.error(f'--shape must be two positive sizes, got {args.shape}')
    if args.num_inputs < 1:
        parser.error(f'--num-inputs must be >= 1, got {args.num_inputs}')
    if not 0 < args.mass <= 1:
        parser.error(f'--mass must lie in (0, 1], got {args.mass}')
    check_output(parser, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    specs = [(args.asmlp, args.asmlp_checkpoint, args.cfg_options)]
    specs += [(spec, ckpt, None) for spec, ckpt in zip(
        args.compare, args.compare_checkpoint + [None] * len(args.compare))]
    rows, names = [], []
    try:
        backbones = []
        for spec, checkpoint, options in specs:  # all of them first: a bad one ends it now
            torch.manual_seed(args.seed)  # the weights that no checkpoint sets
            backbones.append(load_backbone(spec, checkpoint, options))
        for (spec, _, _), backbone in zip(specs, backbones):
            name = osp.splitext(osp.basename(spec))[0]
            try:
                maps = effective_receptive_field(backbone, args.shape, args.num_inputs,
                                                 args.seed)
            except (AssertionError, RuntimeError) as err:  # e.g. an input too small for it
                raise ValueError(f'{name} does not run on a {args.shape[0]}x{args.shape[1]} '
                                 f'input: {type(err).__name__}: {err}') from None
            fractions = ', '.join(f'{centred_square_fraction(m, args.mass):.3f}'
                                  for m in maps)
            print(f'{name}: side of the centred square holding {args.mass:.0%} of the '
                  f'gradient, per stage (fraction of the image side): {fractions}')
            rows.append(maps)
            names.append(name)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f'error: {err}')
    print(f'saved {plot_grid(rows, names, args.out, args.mass)}')


if __name__ == '__main__':
    main()
