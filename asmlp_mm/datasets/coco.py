"""A tiny COCO-format instance segmentation dataset of shapes, for the detection demo.

    make_coco_dataset('data/demo/shapes_coco')

writes the OpenMMLab COCO layout that mmdet's ``CocoDataset`` and ``CocoMetric`` read::

    root/train/*.jpg   root/val/*.jpg
    root/annotations/instances_train.json   root/annotations/instances_val.json

Each image holds one to ``max_shapes`` shapes (:data:`SHAPE_CLASSES`) that do not touch each
other, so every shape is fully visible and its drawn polygon is its true segmentation.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from .shapes import SHAPE_CLASSES, draw_scene, polygon_mask

SPLITS = ('train', 'val')
MAX_SCENE_TRIES = 100


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
    for split, count in zip(SPLITS, (num_train, num_val)):
        coco = write_split(root, split, count, size, max_shapes, rng, classes)
        with open(annotation_file(root, split), 'w') as f:
            json.dump(coco, f)
    return root
