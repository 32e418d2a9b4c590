from .shapes import SHAPE_CLASSES, draw_scene, make_classification_folder, polygon_mask

__all__ = ['SHAPE_CLASSES', 'draw_scene', 'make_classification_folder', 'polygon_mask']
