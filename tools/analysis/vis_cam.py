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
import os
import os.path as osp
import runpy
import sys

import mmcv

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.checkpoint_io import (CheckpointError, CheckpointMismatchError,
                                    load_fitting_weights)
# also the run-time fixes: mmpretrain's tool loads the checkpoint through mmengine
from asmlp_mm.engine.cli import load_config, output_file_problem


def mmpretrain_vis_cam() -> str:
    """Path of mmpretrain's installed ``vis_cam.py``."""
    import mmpretrain
    path = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'visualization',
                    'vis_cam.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmpretrain has no {path}; install mmpretrain from PyPI')
    return path


# what cv2 (mmcv.imwrite, which mmpretrain's tool saves with) writes
IMAGE_SUFFIXES = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')


def check_arguments(args) -> None:
    """Refuse, before mmpretrain's tool runs (``args``: as its own parser read them), what
    it would fail on late or not at all: an image that cannot be read, a config that is
    not a classifier, a checkpoint that does not fit it (mmpretrain would warn and draw
    random weights), target layers or classes the model does not have, and a place to
    save the map that cannot be written (or, with no display to show it, none)."""
    local_image = '://' not in args.img  # mmpretrain reads an image URL too
    for what, path in (('image', args.img if local_image else None), ('config', args.config),
                       ('checkpoint', args.checkpoint)):  # the checkpoint is checked locally
        if path is not None and not osp.isfile(path):
            raise SystemExit(f'error: the {what} {path!r} does not exist')
    if local_image and mmcv.imread(args.img) is None:
        raise SystemExit(f'error: {args.img!r} cannot be read as an image')
    try:
        cfg = load_config(args.config, args.cfg_options)
    except ValueError as err:
        raise SystemExit(f'error: {err}')
    if cfg.get('default_scope') != 'mmpretrain':
        raise SystemExit(f'error: {args.config} is not a classification (mmpretrain) config; '
                         'CAMs are drawn for the classes of a classifier')
    model = build_model_from_config(cfg)
    try:
        load_fitting_weights(model, args.checkpoint, f'the classifier of {args.config}')
    except (CheckpointError, CheckpointMismatchError) as err:
        raise SystemExit(f'error: {err}')
    layers = dict(model.named_modules())
    unknown = [name for name in args.target_layers if name not in layers]
    if unknown:
        norms = [name for name in layers if name.startswith('backbone.norm')]
        raise SystemExit(f'error: --target-layers: the model has no layer {unknown}; its '
                         f'layers are named as in print(model) (--preview-model), e.g. '
                         f'{", ".join(norms) or "backbone"}')
    num_classes = cfg.model.get('head', {}).get('num_classes')
    bad = [c for c in args.target_category if num_classes and not 0 <= c < num_classes]
    if bad:
        raise SystemExit(f'error: --target-category {bad}: the classifier has the classes '
                         f'0..{num_classes - 1}')
    if args.preview_model:
        return
    if args.save_path is None:  # shown in a window (X11 on Linux)
        if sys.platform.startswith('linux') and not os.environ.get('DISPLAY') and \
                not os.environ.get('WAYLAND_DISPLAY'):
            raise SystemExit('error: no display to show the map on: save it with '
                             '--save-path FILE.jpg')
        return
    problem = output_file_problem(str(args.save_path), IMAGE_SUFFIXES)
    if problem:
        raise SystemExit(f'error: --save-path {problem}')


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise SystemExit('the CAM tool needs grad-cam: pip install "grad-cam>=1.3.7,<1.5"')
    script = mmpretrain_vis_cam()
    tool = runpy.run_path(script, run_name='mmpretrain_vis_cam')  # its functions, not run
    sys.argv = [script] + argv
    try:
        args = tool['parse_args']()  # its own parser: any order of its options, its usage
    except ValueError as err:  # an unknown --method
        raise SystemExit(f'error: {err}')
    check_arguments(args)
    tool['main']()


if __name__ == '__main__':
    main()
