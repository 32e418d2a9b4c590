"""Tiny synthetic datasets of simple shapes, for demos and tests.

Every image is a noisy background with a few filled shapes (square, circle, triangle) in
random colours, sizes and positions; the shape's geometry alone tells its class. The same
scene generator writes the three formats:

- :func:`make_classification_folder`: an image-classification folder (mmpretrain's
  ``CustomDataset``), ``root/{train,val}/{class}/*.png``;
- :func:`make_coco_dataset`: COCO instance segmentation in the OpenMMLab layout that
  mmdet's ``CocoDataset`` and ``CocoMetric`` read, ``root/{train,val}/*.jpg`` and
  ``root/annotations/instances_{train,val}.json``; the shapes of an image do not touch, so
  every shape is fully visible and its drawn polygon is its true segmentation;
- :func:`make_ade_dataset`: the ADE20K layout that mmseg's ``ADE20KDataset`` reads,
  ``root/images/{training,validation}/*.jpg`` and ``root/annotations/...*.png`` (uint8:
  0 = other/ignore, 1..N = shapes; as in ADE20K, label 0 is "other" and is ignored,
  ``reduce_zero_label=True`` turns it into 255 and shifts 1..N to 0..N-1).

Nothing here needs mmdet or mmseg.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ('square', 'circle', 'triangle')
# one colour per shape class in the segmentation data: the shapes are drawn in it, and so
# are the predictions
SHAPE_PALETTE = [[220, 20, 60], [0, 120, 255], [255, 190, 0]]
COCO_SPLITS = ('train', 'val')
ADE_SPLITS = ('training', 'validation')
MAX_SCENE_TRIES = 100


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


# ------------------------------------------------------- COCO instance segmentation
def annotation_file(root: str, split: str) -> str:
    """Path of the COCO json of ``split`` ('train' or 'val') under ``root``."""
    return osp.join(root, 'annotations', f'instances_{split}.json')


def enclosing_circle(poly: np.ndarray) -> Tuple[np.ndarray, float]:
    """Centre and radius of a circle around a (K, 2) polygon (vertex mean, max distance)."""
    centre = poly.mean(0)
    return centre, float(np.linalg.norm(poly - centre, axis=1).max())


def shapes_apart(shapes: Sequence[Tuple[int, np.ndarray]], gap: float) -> bool:
    """Whether the enclosing circles of all shapes are at least ``gap`` pixels apart."""
    circles = [enclosing_circle(poly) for _, poly in shapes]
    for i, (ci, ri) in enumerate(circles):
        for cj, rj in circles[i + 1:]:
            if np.linalg.norm(ci - cj) < ri + rj + gap:
                return False
    return True


def draw_separate_shapes(rng: np.random.Generator, size: int, labels: Sequence[int],
                         classes: Sequence[str], gap: float = 2.):
    """Draw scenes until no two shapes overlap; drop the last shape after many failures."""
    labels = list(labels)
    while True:
        for _ in range(MAX_SCENE_TRIES):
            image, shapes = draw_scene(rng, size, size, labels, classes,
                                       min_radius=0.14, max_radius=0.28)
            if shapes_apart(shapes, gap):
                return image, shapes
        labels = labels[:-1]  # a single shape always fits


def shape_annotation(poly: np.ndarray, label: int, size: int, image_id: int,
                     ann_id: int) -> Dict:
    """One COCO annotation: polygon segmentation, xywh box, mask area, category id."""
    area = int(polygon_mask(poly, size, size).sum())
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    return dict(id=ann_id, image_id=image_id, category_id=label + 1, iscrowd=0,
                segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]],
                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                area=area)


def write_split(root: str, split: str, count: int, size: int, max_shapes: int,
                rng: np.random.Generator, classes: Sequence[str]) -> Dict:
    """Write the images of one split and return its COCO dict."""
    os.makedirs(osp.join(root, split), exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(count):
        labels = rng.integers(0, len(classes), rng.integers(1, max_shapes + 1))
        image, shapes = draw_separate_shapes(rng, size, labels, classes)
        file_name = f'{split}_{index:04d}.jpg'
        Image.fromarray(image).save(osp.join(root, split, file_name), quality=95)
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
        for label, poly in shapes:
            annotations.append(shape_annotation(poly, label, size, image_id,
                                                len(annotations) + 1))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(classes)]
    return dict(info=dict(description=f'synthetic shapes, {split}'), licenses=[],
                images=images, annotations=annotations, categories=categories)


def make_coco_dataset(root: str, seed: int = 0, num_train: int = 48, num_val: int = 16,
                      size: int = 96, max_shapes: int = 3,
                      classes: Sequence[str] = SHAPE_CLASSES) -> str:
    """Write a tiny COCO instance segmentation dataset of shapes under ``root``.

    Args:
        root (str): Output folder (created if missing; existing files are overwritten).
        seed (int): Seed of the generator; the same seed writes the same dataset.
        num_train (int): Number of training images.
        num_val (int): Number of validation images.
        size (int): Side of the square images in pixels (at least 32).
        max_shapes (int): At most this many shapes per image (at least one).
        classes (Sequence[str]): Shape names, a subset of :data:`SHAPE_CLASSES`; category
            ids are 1-based in this order.

    Returns:
        str: ``root``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be positive, got {num_train} and '
                         f'{num_val}')
    if size < 32:
        raise ValueError(f'size must be at least 32 pixels, got {size}')
    if max_shapes < 1:
        raise ValueError(f'max_shapes must be at least 1, got {max_shapes}')
    unknown = set(classes) - set(SHAPE_CLASSES)
    if unknown or not classes:
        raise ValueError(f'classes must be a non-empty subset of {SHAPE_CLASSES}, got '
                         f'{tuple(classes)}')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split, count in zip(COCO_SPLITS, (num_train, num_val)):
        coco = write_split(root, split, count, size, max_shapes, rng, classes)
        with open(annotation_file(root, split), 'w') as f:
            json.dump(coco, f)
    return root


# ------------------------------------------------------- ADE20K semantic segmentation
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
    for split, count in zip(ADE_SPLITS, (num_train, num_val)):
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
