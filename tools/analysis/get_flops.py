"""Parameters and FLOPs of our configs, and a comparison with the paper's figures.

FLOPs are multiply-accumulates (1 MAC = 1 FLOP), as the AS-MLP paper (and most vision
papers) count them, measured by mmengine's ``FlopAnalyzer`` (:mod:`asmlp_mm.analysis`).

* Classification and segmentation run the way the toolboxes' own ``get_flops`` run them:
  one random image of the given shape is packed, passed through the model's data
  preprocessor and the model's ``'tensor'`` forward (backbone + head; backbone + decode
  head: the auxiliary head only trains, so it costs no FLOPs). Parameters are those of the
  whole model, auxiliary head included, as the paper counts them (mmseg 1.x's get_flops
  leaves the auxiliary head out: 0.9M less for AS-MLP-T's UperNet).
* Detection (``--rois``): ``paper`` (default) counts the convention of the paper's figures
  (mmdet 2.x ``forward_dummy``, :func:`asmlp_mm.analysis.detection.detector_flops`):
  backbone, FPN and RPN on the image, every box head on 1000 RoIs and every mask head on
  100. ``rpn`` runs mmdet 3.x's get_flops way instead: the packed image through the data
  preprocessor (padded to a multiple of 32) and the ``'tensor'`` forward, whose RoI heads
  see however many proposals the RPN keeps (every head, masks included, on all of them).

Examples::

    python tools/analysis/get_flops.py configs/asmlp/asmlp-tiny_8xb128_in1k.py
    python tools/analysis/get_flops.py CONFIG --shape 800 1280
    python tools/analysis/get_flops.py --paper                  # every config in the zoo
    python tools/analysis/get_flops.py --paper --filter asmlp-tiny
"""
import argparse
import os.path as osp
from typing import List, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction

from asmlp_mm.analysis import measure, paper
from asmlp_mm.analysis.model_cost import (DEFAULT_SHAPES, PAPER_BOX_ROIS, PAPER_MASK_ROIS,
                                          ROI_MODES)
from asmlp_mm.engine.cli import load_config

MAC_NOTE = 'FLOPs are multiply-accumulates (1 MAC = 1 FLOP), as counted in the paper'


def shape_for(config: str, cfg: Config, shape: Optional[Sequence[int]]) -> Tuple[int, int]:
    """``--shape`` if given, else the zoo's FLOPs shape of the config, else a default."""
    if shape:
        return (shape[0], shape[-1])
    entry = paper.find_model(config)
    if entry is not None and entry.flops_shape:
        return entry.flops_shape
    return DEFAULT_SHAPES.get(cfg.get('default_scope'), (224, 224))


def report_one(config: str, shape, cfg_options, rois: str = 'paper') -> dict:
    cfg = load_config(config, cfg_options)
    size = shape_for(config, cfg, shape)
    result = measure(cfg, size, rois)
    line = '=' * 60
    print(f'{line}\nConfig: {config}\nInput shape: {size[0]} x {size[1]} (H x W)')
    if tuple(result['input_shape']) != tuple(size):
        print(f'Padded by the data preprocessor to: {result["input_shape"]}')
    if 'parts' in result:
        print(f'RoIs: {PAPER_BOX_ROIS} per box head, {PAPER_MASK_ROIS} per mask head '
              f'(the paper\'s convention)')
        print('\n'.join(f'  {name}: {value / 1e9:.2f} G'
                        for name, value in result['parts'].items()))
    flops = result['flops']  # in M where G would print 0.00 (a tiny demo model)
    flops = f'{flops / 1e9:.2f} G' if flops >= 5e6 else f'{flops / 1e6:.2f} M'
    print(f'Params: {result["params"] / 1e6:.2f} M\n'
          f'FLOPs: {flops}\n{MAC_NOTE}.\n{line}')
    return result


def _diff(ours: float, theirs: Optional[float]) -> str:
    if not theirs:
        return '-'
    return f'{ours - theirs:+.2f} ({(ours - theirs) / theirs:+.1%})'


def paper_table(filters: List[str], cfg_options=None, rois: str = 'paper') -> List[dict]:
    """Measure every zoo config matching ``filters`` (substrings) and print it next to
    the paper's figures; return one row per model. Configs that differ only in their
    schedule (1x / 3x) build the same model and are measured once."""
    models = paper.load_models()
    entries = [e for e in models
               if not filters or any(f in e.name or f in e.config for f in filters)]
    if not entries:
        raise ValueError(f'no model of the zoo matches {filters}; the names: '
                         f'{", ".join(e.name for e in models)}')
    width = max([len(e.name) for e in entries] + [5])
    header = (f'{"model":<{width}} {"shape":>10} {"params(M)":>9} {"paper":>6} '
              f'{"diff":>15} {"FLOPs(G)":>9} {"paper":>7} {"diff":>16}')
    print(header + '\n' + '-' * len(header))
    rows, measured = [], {}
    for entry in entries:
        if not osp.isfile(entry.config_path()):
            print(f'{entry.name:<{width}} config {entry.config} does not exist')
            rows.append(dict(name=entry.name, missing=True))
            continue
        cfg = load_config(entry.config_path(), cfg_options)
        size = entry.flops_shape or DEFAULT_SHAPES.get(cfg.get('default_scope'), (224, 224))
        key = (repr(cfg.model.to_dict()), tuple(size), rois)
        if key not in measured:
            measured[key] = measure(cfg, size, rois)
        result = measured[key]
        params, flops = result['params'] / 1e6, result['flops'] / 1e9
        paper_params = entry.params / 1e6 if entry.params else None
        paper_flops = entry.flops / 1e9 if entry.flops else None
        print(f'{entry.name:<{width}} {f"{size[0]}x{size[1]}":>10} {params:>9.2f} '
              f'{paper_params or "-":>6} {_diff(params, paper_params):>15} {flops:>9.2f} '
              f'{paper_flops or "-":>7} {_diff(flops, paper_flops):>16}', flush=True)
        rows.append(dict(name=entry.name, params=result['params'], flops=result['flops'],
                         paper_params=entry.params, paper_flops=entry.flops,
                         shape=tuple(size)))
    print(f'{MAC_NOTE}; shapes are H x W.')
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Params and FLOPs (multiply-accumulates) of asmlp-mm configs')
    parser.add_argument('config', nargs='?', help='config file (not needed with --paper)')
    parser.add_argument('--shape', type=int, nargs='+', metavar=('H', 'W'),
                        help='input size: H W, or one value for a square; default: the '
                        "paper's FLOPs input size for zoo configs, else 224 (cls), "
                        '800x1280 (det), 512x2048 (seg)')
    parser.add_argument('--paper', action='store_true',
                        help="compare every zoo config with the paper's params and FLOPs")
    parser.add_argument('--filter', nargs='+', default=[],
                        help='with --paper: only models whose name or config contains '
                        'one of these strings')
    parser.add_argument('--rois', choices=ROI_MODES, default='paper',
                        help='detectors: RoIs of the box/mask heads: "paper" = 1000/100 as '
                        'the paper counts, "rpn" = the proposals of a real forward pass')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    if args.shape is not None and (len(args.shape) not in (1, 2) or min(args.shape) < 1):
        parser.error(f'--shape takes H W or one size, all positive, got {args.shape}')
    if not args.paper and not args.config:
        parser.error('give a config, or --paper')
    if args.paper and args.shape is not None:
        parser.error("--paper measures each model at the input size of the paper's FLOPs; "
                     'it does not take --shape')
    if args.filter and not args.paper:
        parser.error('--filter chooses models of --paper')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.paper:
            filters = list(args.filter)
            if args.config:
                filters.append(osp.splitext(osp.basename(args.config))[0])
            paper_table(filters, args.cfg_options, args.rois)
        else:
            report_one(args.config, args.shape, args.cfg_options, args.rois)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}')


if __name__ == '__main__':
    main()
