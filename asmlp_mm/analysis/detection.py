"""FLOPs of two-stage detectors (Mask R-CNN, Cascade Mask R-CNN), counted as the paper does.

The paper's detection FLOPs (1280x800) come from Swin's detection code, which ran mmdet 2.x's
``get_flops`` on ``forward_dummy``: the backbone, the neck and the RPN convolutions on the
whole image, then every box head on 1000 proposals and every mask head on 100 of them. The
number of RoIs of a real forward pass depends on the image and the weights, so that fixed
convention is what makes the figure comparable. :func:`detector_flops` counts the same parts
with :func:`asmlp_mm.analysis.flops.count_flops` (multiply-accumulates). RoIAlign and the box/mask
post-processing are not counted, as there.
"""
from typing import Dict, Sequence

import torch
import torch.nn as nn

from .flops import count_flops


def _heads_and_extractors(heads, extractors) -> list:
    """Pairs (head, RoI extractor) of every stage; one extractor may serve all heads."""
    heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
    extractors = list(extractors) if isinstance(extractors, nn.ModuleList) else [extractors]
    if len(extractors) == 1:
        extractors = extractors * len(heads)
    return list(zip(heads, extractors))


def _heads_flops(heads, extractors, num_rois: int, device) -> int:
    return sum(count_flops(head, [_roi_feats(extractor, num_rois, device)])
               for head, extractor in _heads_and_extractors(heads, extractors))


def _roi_feats(extractor, num_rois: int, device) -> torch.Tensor:
    """Zero RoI features of the shape ``extractor`` outputs for ``num_rois`` RoIs."""
    size = extractor.roi_layers[0].output_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return torch.zeros(num_rois, extractor.out_channels, *size, device=device)


def detector_flops(model: nn.Module, shape: Sequence[int] = (800, 1280),
                   num_proposals: int = 1000, num_mask_rois: int = 100) -> Dict[str, int]:
    """Multiply-accumulates of a two-stage detector on one image, part by part.

    Args:
        model (nn.Module): An mmdet ``TwoStageDetector`` (``backbone``, ``neck``,
            ``rpn_head`` and a ``roi_head`` with ``bbox_head`` and optionally
            ``mask_head``, one per stage for cascades).
        shape (Sequence[int]): Input (height, width). Defaults to (800, 1280), the paper's
            1280x800.
        num_proposals (int): RoIs fed to each box head. Defaults to 1000.
        num_mask_rois (int): RoIs fed to each mask head. Defaults to 100.

    Returns:
        dict: MACs of 'backbone', 'neck', 'rpn_head', 'bbox_heads', 'mask_heads' and their
        'total'.
    """
    for part in ('backbone', 'neck', 'rpn_head', 'roi_head'):
        if getattr(model, part, None) is None:
            raise TypeError(f'detector_flops needs a two-stage detector with a {part}, got '
                            f'{type(model).__name__}')
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f'shape must be (height, width), got {shape}')
    if num_proposals < 1 or num_mask_rois < 0:
        raise ValueError(f'need num_proposals >= 1 and num_mask_rois >= 0, got '
                         f'{num_proposals} and {num_mask_rois}')
    device = next(model.parameters()).device
    roi_head = model.roi_head
    image = torch.zeros(1, 3, *shape, device=device)
    with torch.no_grad():
        feats = model.backbone.eval()(image)
        pyramid = model.neck.eval()(feats)
    flops = dict(
        backbone=count_flops(model.backbone, [image]),
        neck=count_flops(model.neck, [feats]),
        rpn_head=count_flops(model.rpn_head, [pyramid]),
        bbox_heads=_heads_flops(roi_head.bbox_head, roi_head.bbox_roi_extractor,
                                num_proposals, device),
        mask_heads=0)
    if getattr(roi_head, 'with_mask', False) and num_mask_rois:
        flops['mask_heads'] = _heads_flops(roi_head.mask_head, roi_head.mask_roi_extractor,
                                           num_mask_rois, device)
    flops['total'] = sum(flops.values())
    return flops
