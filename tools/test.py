"""Evaluate a checkpoint with any config of this repository.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--tta] [--show-dir DIR]
        [--out FILE.pkl] [--dump-metrics FILE.json] [--cfg-options KEY=VALUE ...]
        [--launcher ...]

``--tta`` swaps in the config's ``tta_model`` and ``tta_pipeline`` (multi-scale + flip
for the segmentation configs: the "MS mIoU" of the paper).
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import ConfigDict
from mmengine.runner import Runner

from asmlp_mm.engine.cli import (add_common_args, exit_after_success, load_run_config,
                                 output_file_problem, run_loop)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation from the config (tta_model)')
    parser.add_argument('--show-dir',
                        help='save drawn predictions under WORK_DIR/SHOW_DIR (mmdet: '
                        'WORK_DIR/TIMESTAMP/SHOW_DIR); an absolute path is used as is')
    parser.add_argument('--out', help='dump raw predictions to this pickle file')
    parser.add_argument('--dump-metrics', help='write the final metrics to this JSON file')
    return parser.parse_args()


def enable_drawing(cfg, show_dir):
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('--show-dir needs a "visualization" hook in default_hooks')
    if hook['type'] == 'VisualizationHook':  # mmpretrain: under WORK_DIR/SHOW_DIR
        hook.update(enable=True, interval=1, out_dir=osp.join(cfg.work_dir, show_dir))
    elif hook['type'] == 'SegVisualizationHook':  # saves through the visualizer
        hook.update(draw=True, interval=1)
        cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)
    else:  # DetVisualizationHook: under WORK_DIR/TIMESTAMP/SHOW_DIR
        hook.update(draw=True, test_out_dir=show_dir, interval=1)


def without_training(cfg):
    """A test runner has no training parts: mmseg's visualization hook reads
    ``runner.iter``, which otherwise builds the training loop and its dataset (which then
    must be on disk) while testing."""
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None


def warn_drawing_on_one_process(runner):
    """The visualizers of mmdet, mmseg and mmpretrain draw on the main process only
    (``master_only``): with N processes, only its 1/N of the images are drawn."""
    from mmengine.dist import get_world_size
    world_size = get_world_size()
    if world_size > 1:
        runner.logger.warning(
            f'--show-dir with {world_size} processes: the visualizers draw on process 0 '
            f'only, so only its share of the images (about 1/{world_size}) is drawn; run '
            f'tools/test.py in one process to draw every image')


def check_output_file(path: str, option: str, suffixes=()) -> None:
    """Refuse, before the evaluation rather than after it, an output file that cannot be
    written (:func:`asmlp_mm.engine.cli.output_file_problem`); then create its folder."""
    problem = output_file_problem(path, suffixes)
    if problem:
        raise SystemExit(f'{option} {problem}')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)


def enable_tta(cfg):
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit('--tta: the config defines no tta_model/tta_pipeline')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main():
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = load_run_config(args)
    cfg.load_from = args.checkpoint
    without_training(cfg)
    if args.dump_metrics:
        check_output_file(args.dump_metrics, '--dump-metrics')
    if args.out:  # mmengine's DumpResults takes these suffixes only
        check_output_file(args.out, '--out', ('.pkl', '.pickle'))
    if args.show_dir:
        enable_drawing(cfg, args.show_dir)
    if args.tta:
        enable_tta(cfg)
    if args.out:  # mmengine's metric that pickles the predictions, beside the config's
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
        cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=args.out)]
    runner = Runner.from_cfg(cfg)
    if args.show_dir:
        warn_drawing_on_one_process(runner)
    # fail with the mismatched keys instead of evaluating a half-loaded model
    metrics = run_loop(runner.test, runner, evaluator='test_evaluator')
    if args.dump_metrics:
        with open(args.dump_metrics, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float))}, f, indent=2)


if __name__ == '__main__':
    main()
    exit_after_success()
