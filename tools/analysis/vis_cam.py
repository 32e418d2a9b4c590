"""Class activation maps of an AS-MLP classifier through mmpretrain's own CAM tool.

mmpretrain ships ``tools/visualization/vis_cam.py`` inside the installed package (it needs
``grad-cam>=1.3.7,<1.5``, in ``requirements.txt``). This wrapper finds that script and runs
it with the given arguments, so that any of its options work unchanged. For AS-MLP the
default target layer is the last norm of the backbone (``backbone.norm3``, the final
GroupNorm before pooling), which is what Grad-CAM needs for a CNN-like NCHW feature map.

Example::

    python tools/analysis/vis_cam.py demo.jpg configs/asmlp/asmlp-tiny_8xb128_in1k.py \\
        checkpoints/asmlp-tiny_8xb128_in1k.pth --method gradcam --save-path cam.jpg
    python tools/analysis/vis_cam.py demo.jpg CONFIG CKPT --target-layers \\
        backbone.stages.3.blocks.1.norm2 --method gradcam++ --target-category 281
"""
import argparse
import os.path as osp
import runpy
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def mmpretrain_vis_cam() -> str:
    """Path of mmpretrain's installed ``vis_cam.py``."""
    import mmpretrain
    path = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'visualization',
                    'vis_cam.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmpretrain has no {path}; install mmpretrain from PyPI')
    return path


def check_classifier_checkpoint(argv) -> None:
    """Refuse, before mmpretrain's tool runs, a config that is not a classifier and a
    checkpoint that does not fit it (mmpretrain would warn and draw random weights)."""
    from mmengine.config import Config, DictAction
    from asmlp_mm.analysis import build_model_from_config
    from asmlp_mm.compat import CheckpointError
    from asmlp_mm.engine import CheckpointMismatchError, load_fitting_weights
    from asmlp_mm.engine.options import CfgOptionsError, merge_cfg_options
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('img')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args, _ = parser.parse_known_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            raise SystemExit(f'error: {path!r} does not exist')
    try:
        cfg = merge_cfg_options(Config.fromfile(args.config), args.cfg_options, args.config)
    except CfgOptionsError as err:
        raise SystemExit(f'error: {err}')
    if cfg.get('default_scope') != 'mmpretrain':
        raise SystemExit(f'error: {args.config} is not a classification (mmpretrain) config; '
                         'CAMs are drawn for the classes of a classifier')
    model = build_model_from_config(cfg)
    try:
        load_fitting_weights(model, args.checkpoint, f'the classifier of {args.config}')
    except (CheckpointError, CheckpointMismatchError) as err:
        raise SystemExit(f'error: {err}')


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import asmlp_mm  # noqa: F401  registers ASMLP and the checkpoint loading fix
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise SystemExit('the CAM tool needs grad-cam: pip install "grad-cam>=1.3.7,<1.5"')
    if not {'-h', '--help'} & set(argv):
        check_classifier_checkpoint(argv)
    script = mmpretrain_vis_cam()
    sys.argv = [script] + argv
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
