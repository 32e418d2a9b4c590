"""Class activation maps of an AS-MLP classifier through mmpretrain's own CAM tool.

mmpretrain ships ``tools/visualization/vis_cam.py`` inside the installed package (it needs
``grad-cam>=1.3.7,<1.5``, in ``requirements.txt``). This wrapper finds that script and runs
it with the given arguments, so that any of its options work unchanged. For AS-MLP the
default target layer is the last norm of the backbone (``backbone.norm3``, the final
GroupNorm before pooling), which is what Grad-CAM needs for a CNN-like NCHW feature map.

Example::

    python tools/analysis/vis_cam.py demo.jpg configs/asmlp/asmlp-tiny_8xb128_in1k.py \\
        checkpoints/asmlp-tiny_in1k.pth --method gradcam --save-path cam.jpg
    python tools/analysis/vis_cam.py demo.jpg CONFIG CKPT --target-layers \\
        backbone.stages.3.blocks.1.norm2 --method gradcam++ --target-category 281
"""
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import asmlp_mm  # noqa: F401  registers ASMLP and the checkpoint loading fix
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise SystemExit('the CAM tool needs grad-cam: pip install "grad-cam>=1.3.7,<1.5"')
    script = mmpretrain_vis_cam()
    sys.argv = [script] + argv
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
