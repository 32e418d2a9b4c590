"""Train any config of this repository (classification, detection or segmentation).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse

from mmengine.runner import Runner

from asmlp_mm.engine import find_resumable_checkpoint
from asmlp_mm.engine.cli import (add_common_args, exit_after_success, load_run_config,
                                 run_loop)
from asmlp_mm.runtime import enable_amp


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    add_common_args(parser)
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir if no '
        'path is given')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed precision (the ImageNet and COCO configs have it already): float16 AMP '
        'on CUDA, bfloat16 autocast on CPU')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by the actual total batch size')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_run_config(args)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        # the newest checkpoint that loads (a save cut off by a crash is skipped)
        found = find_resumable_checkpoint(cfg.work_dir)
        # without one, mmengine's own search would pick a broken file; the run starts as
        # without --resume (from the config's load_from, if it has one)
        cfg.resume = found is not None
        if cfg.resume:
            cfg.load_from = found
        else:
            start = (f"from load_from={cfg.load_from!r}" if cfg.get('load_from')
                     else 'from scratch')
            print(f'--resume: no checkpoint that loads in {cfg.work_dir}, training {start}')
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise SystemExit('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size '
                             '(the total batch size its learning rate is set for)')
        cfg.auto_scale_lr.enable = True
    runner = Runner.from_cfg(cfg)
    # the training state of another model would fail later and less clearly; fine-tuning
    # from load_from may leave out a few weights, not all
    run_loop(runner.train, runner, evaluator='val_evaluator')


if __name__ == '__main__':
    main()
    exit_after_success()
