"""A tiny ADE20K-format semantic segmentation dataset of simple shapes.

:func:`make_ade_dataset` writes the layout mmseg's ``ADE20KDataset`` reads::

    root/images/{training,validation}/*.jpg
    root/annotations/{training,validation}/*.png   (uint8: 0 = other/ignore, 1..N = shapes)

As in ADE20K, label 0 is "other" and is ignored (``reduce_zero_label=True`` turns it into
255 and shifts 1..N to 0..N-1). :class:`ShapesADE20KDataset` is ``ADE20KDataset`` with the
shape classes, so the demo config only swaps the dataset type. Importing this module
registers it in mmseg's DATASETS.
"""
import os
import os.path as osp
from typing import Tuple, Union

import numpy as np
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS
from PIL import Image

from .shapes import SHAPE_CLASSES, draw_scene, polygon_mask

# one colour per shape class: the shapes are drawn in it, and so are the predictions
SHAPE_PALETTE = [[220, 20, 60], [0, 120, 255], [255, 190, 0]]
SPLITS = ('training', 'validation')


@DATASETS.register_module()
class ShapesADE20KDataset(ADE20KDataset):
    """``ADE20KDataset`` (``.jpg`` images, ``.png`` labels, ``reduce_zero_label=True``)
    whose classes are the shapes of :data:`SHAPE_CLASSES`.

    Args:
        **kwargs: Passed to ``ADE20KDataset`` (``data_root``, ``data_prefix``,
            ``pipeline``, ...).
    """
    METAINFO = dict(classes=SHAPE_CLASSES, palette=SHAPE_PALETTE)


def _as_size(size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair; rejects tiny or bad sizes."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(height, int) and isinstance(width, int)) or min(height, width) < 16:
        raise ValueError(f'size must be an int or (height, width) of ints >= 16, got {size!r}')
    return height, width


def draw_labelled_scene(rng: np.random.Generator, height: int, width: int,
                        max_shapes: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """One image with 1..``max_shapes`` random shapes and its ADE20K-style label map.

    Args:
        rng (np.random.Generator): Random source.
        height (int): Image height.
        width (int): Image width.
        max_shapes (int): Most shapes per image.

    Returns:
        The RGB image (H, W, 3) uint8 and the label map (H, W) uint8: 0 where no shape is,
        ``class_index + 1`` where the topmost shape is.
    """
    labels = rng.integers(0, len(SHAPE_CLASSES), rng.integers(1, max_shapes + 1))
    image, shapes = draw_scene(rng, height, width, labels, class_colours=SHAPE_PALETTE)
    label_map = np.zeros((height, width), np.uint8)
    for class_index, poly in shapes:  # drawing order: later shapes cover earlier ones
        label_map[polygon_mask(poly, height, width)] = class_index + 1
    return image, label_map


def make_ade_dataset(root: str, seed: int = 0, num_train: int = 64, num_val: int = 16,
                     size: Union[int, Tuple[int, int]] = (64, 80),
                     max_shapes: int = 3) -> str:
    """Write a tiny ADE20K-format dataset of shapes under ``root`` and return ``root``.

    Args:
        root (str): Output folder (created if missing).
        seed (int): Seed of the generator; the same seed writes the same files.
        num_train (int): Images in ``training``.
        num_val (int): Images in ``validation``.
        size (int | tuple[int, int]): Image size, ``(height, width)`` or one int.
        max_shapes (int): Most shapes per image (at least one each).

    Returns:
        str: ``root``.
    """
    height, width = _as_size(size)
    if num_train < 1 or num_val < 1 or max_shapes < 1:
        raise ValueError('num_train, num_val and max_shapes must be >= 1, got '
                         f'{num_train}, {num_val}, {max_shapes}')
    rng = np.random.default_rng(seed)
    for split, count in zip(SPLITS, (num_train, num_val)):
        image_dir = osp.join(root, 'images', split)
        label_dir = osp.join(root, 'annotations', split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for i in range(count):
            image, label_map = draw_labelled_scene(rng, height, width, max_shapes)
            name = f'ADE_{split}_{i:05d}'
            Image.fromarray(image).save(osp.join(image_dir, name + '.jpg'), quality=95)
            Image.fromarray(label_map).save(osp.join(label_dir, name + '.png'))
    return root
