"""Tiny synthetic datasets of simple shapes, for demos and tests.

Every image is a noisy background with a few filled shapes (square, circle, triangle) in
random colours, sizes and positions; the shape's geometry alone tells its class. The same
scene generator feeds the three formats: an image-classification folder (mmpretrain's
``CustomDataset``), COCO instance segmentation and ADE20K-style semantic segmentation.
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ('square', 'circle', 'triangle')


def shape_polygon(rng: np.random.Generator, shape: str, center: Tuple[float, float],
                  radius: float) -> np.ndarray:
    """Vertices (K, 2) in (x, y) pixels of one shape, randomly rotated."""
    angle = rng.uniform(0, 2 * np.pi)
    if shape == 'square':
        k = 4
    elif shape == 'triangle':
        k = 3
    elif shape == 'circle':
        k = 32
    else:
        raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPE_CLASSES}')
    t = angle + np.arange(k) * 2 * np.pi / k
    return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], 1)


def draw_scene(rng: np.random.Generator, height: int, width: int, labels: Sequence[int],
               classes: Sequence[str] = SHAPE_CLASSES, min_radius: float = 0.12,
               max_radius: float = 0.3, class_colours: Optional[Sequence] = None
               ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one shape of class ``classes[label]`` per entry of ``labels`` on a noisy
    background. Radii are fractions of the shorter image side.

    By default every shape gets a random colour that contrasts with the background, so
    only its outline tells its class. With ``class_colours`` (one RGB triple per class)
    shapes are drawn in their class's colour (jittered) on a grey background: an easier
    task, learnt in a few hundred CPU iterations by a tiny segmenter.

    Returns:
        The RGB image (H, W, 3) uint8 and, in drawing order (later shapes cover earlier
        ones), a list of ``(class_index, polygon)`` with polygons clipped to the image.
    """
    base = rng.integers(0, 256, 3) if class_colours is None \
        else np.full(3, rng.integers(40, 216))
    noise = rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shapes = []
    side = min(height, width)
    for label in labels:
        radius = rng.uniform(min_radius, max_radius) * side
        center = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        poly = shape_polygon(rng, classes[label], center, radius)
        poly[:, 0] = poly[:, 0].clip(0, width - 1)
        poly[:, 1] = poly[:, 1].clip(0, height - 1)
        if class_colours is None:  # a colour far from the background
            colour = (base + 128 + rng.integers(-40, 40, 3)) % 256
        else:
            colour = np.clip(np.asarray(class_colours[label]) + rng.integers(-25, 26, 3),
                             0, 255)
        colour = tuple(int(v) for v in colour)
        draw.polygon([tuple(p) for p in poly], fill=colour)
        shapes.append((int(label), poly))
    return np.asarray(image), shapes


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of a filled polygon, rasterized as in :func:`draw_scene`."""
    mask = Image.new('L', (width, height), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(mask, dtype=bool)


def make_classification_folder(root: str, num_train: int = 20, num_val: int = 8,
                               size: int = 48, seed: int = 0,
                               classes: Sequence[str] = SHAPE_CLASSES) -> str:
    """Write ``root/{train,val}/{class}/*.png``: one shape per image, labelled by shape.

    The layout is the one mmpretrain's ``CustomDataset`` reads with ``data_prefix='train'``
    (class names from the sub-folder names). ``num_train`` / ``num_val`` are per class.
    """
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        for label, name in enumerate(classes):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                image, _ = draw_scene(rng, size, size, [label], classes, 0.25, 0.4)
                Image.fromarray(image).save(osp.join(folder, f'{split}_{label}_{i:04d}.png'))
    return root
