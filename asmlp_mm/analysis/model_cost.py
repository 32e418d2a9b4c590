"""Parameters and FLOPs of a config's model on one image, as the toolboxes' ``get_flops``
run it (or, for two-stage detectors, with the paper's RoI counts).

FLOPs are multiply-accumulates (1 MAC = 1 FLOP), as the AS-MLP paper counts them.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from .detection import detector_flops
from .flops import build_model_from_config, count_flops, count_params

#: input (H, W) of each toolbox when neither the user nor the zoo gives one
DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmdet': (800, 1280), 'mmseg': (512, 2048)}
#: RoIs of the box/mask heads of a detector: the paper's 1000/100, or a real forward's
ROI_MODES = ('paper', 'rpn')
PAPER_BOX_ROIS, PAPER_MASK_ROIS = 1000, 100


class TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` of an OpenMMLab model as one call
    (what FLOP counters, profilers and benchmarks take).

    Args:
        model (nn.Module): A classifier, detector or segmentor (``BaseModel``).
        data_samples (list, optional): Data samples (image metas) the forward needs.
    """

    def __init__(self, model: nn.Module, data_samples: Optional[list] = None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='tensor')


def data_samples(scope: str, batch: int, height: int, width: int) -> list:
    """Empty data samples of the toolbox ``scope`` for ``batch`` images of (height,
    width), with the image metas a tensor forward reads."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width),
                pad_shape=(height, width), scale_factor=(1., 1.),
                batch_input_shape=(height, width))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmpretrain.structures import DataSample as Sample
    return [Sample(metainfo=meta) for _ in range(batch)]


def build_for_analysis(cfg: Config) -> nn.Module:
    """The config's model in eval mode, SyncBN reverted."""
    try:
        model = build_model_from_config(cfg)
    except (KeyError, TypeError) as err:  # an unknown type; an argument it does not take
        raise ValueError(f'the model of the config cannot be built: {type(err).__name__}: '
                         f'{err}') from None
    return revert_sync_batchnorm(model).eval()


def measure(cfg: Config, shape: Sequence[int], rois: str = 'paper', seed: int = 0) -> dict:
    """Params and MACs of ``cfg.model`` on one random image of ``shape`` (H, W).

    Classifiers and segmentors, and detectors with ``rois='rpn'``, run as the toolboxes'
    own ``get_flops`` runs them: the packed image through the data preprocessor and the
    ``'tensor'`` forward. Detectors with ``rois='paper'`` count the paper's convention
    (:func:`.detection.detector_flops`).

    Args:
        cfg (Config): A classification, detection or segmentation config.
        shape (Sequence[int]): Input (H, W).
        rois (str): Detectors only: 'paper' (1000 box RoIs, 100 mask RoIs per head) or
            'rpn' (the tensor forward on the RPN's proposals).
        seed (int): Seed of the random image.

    Returns:
        dict: ``params``, ``flops``, ``input_shape`` (what the model saw after the data
        preprocessor) and, for ``rois='paper'``, ``parts`` (MACs per part).
    """
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f'--shape must be positive, got {list(shape)}')
    if rois not in ROI_MODES:
        raise ValueError(f'rois must be one of {ROI_MODES}, got {rois!r}')
    scope = cfg.get('default_scope', 'mmpretrain')
    model = build_for_analysis(cfg)
    if scope == 'mmdet' and rois == 'paper':
        if any(getattr(model, part, None) is None for part in ('rpn_head', 'roi_head')):
            raise ValueError(f'--rois paper counts the RoI heads of a two-stage detector as '
                             f'the paper does; {type(model).__name__} has none: use --rois '
                             f'rpn (its tensor forward)')
        parts = detector_flops(model, (height, width), PAPER_BOX_ROIS, PAPER_MASK_ROIS)
        return dict(params=count_params(model), flops=parts.pop('total'),
                    input_shape=(height, width), parts=parts)
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator,
                          dtype=torch.uint8)
    batch = dict(inputs=[image], data_samples=data_samples(scope, 1, height, width))
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
    inputs = data['inputs']
    flops = count_flops(TensorForward(model, data['data_samples']), [inputs])
    return dict(params=count_params(model), flops=flops,
                input_shape=tuple(inputs.shape[-2:]))
