"""Synthetic datasets of shapes (:mod:`.shapes`, no toolbox needed) and the toolboxes'
datasets with checks of bad data (:mod:`.imagenet`, :mod:`.coco`, :mod:`.ade`, registered
when imported; the configs import them in ``custom_imports``)."""
from .shapes import (SHAPE_CLASSES, draw_scene, make_ade_dataset, make_classification_folder,
                     make_coco_dataset, polygon_mask)

__all__ = [
    'SHAPE_CLASSES', 'draw_scene', 'make_ade_dataset', 'make_classification_folder',
    'make_coco_dataset', 'polygon_mask'
]
