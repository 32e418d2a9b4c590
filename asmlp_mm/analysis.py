"""Model size and cost, counted the way the paper counts them.

FLOPs here are multiply-accumulates (one MAC = one FLOP), as in the AS-MLP paper and most
vision papers; mmengine's FlopAnalyzer counts the same way. Parameters are all parameters
of the built model.
"""
from typing import Sequence

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope


def build_model_from_config(cfg) -> torch.nn.Module:
    """Build ``cfg.model`` in the config's own scope (mmpretrain, mmdet or mmseg)."""
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    import asmlp_mm  # noqa: F401  (registers ASMLP)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return MODELS.build(cfg.model)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, inputs: Sequence) -> int:
    """Multiply-accumulates of ``model(*inputs)`` (no per-op warnings)."""
    analyzer = FlopAnalyzer(model.eval(), tuple(inputs))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analyzer.total()
