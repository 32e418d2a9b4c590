"""Model size and cost, counted the way the paper counts them, and the paper's figures.

- :mod:`.flops`: parameters and FLOPs (multiply-accumulates) of any config's model;
- :mod:`.model_cost`: the same of a config's model on one image, as ``get_flops`` runs it;
- :mod:`.detection`: FLOPs of two-stage detectors with the paper's fixed RoI counts;
- :mod:`.paper`: the paper's figures, read from the model zoo metafiles.
"""
from .detection import detector_flops
from .flops import build_model_from_config, count_flops, count_params, save_initial_weights
from .model_cost import TensorForward, data_samples, measure

__all__ = [
    'TensorForward', 'build_model_from_config', 'count_flops', 'count_params',
    'data_samples', 'detector_flops', 'measure', 'save_initial_weights'
]
