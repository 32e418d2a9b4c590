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

from .. import registry  # noqa: F401  (registers ASMLP in every toolbox's scope)


def build_model_from_config(cfg) -> torch.nn.Module:
    """Build ``cfg.model`` in the config's own scope (mmpretrain, mmdet or mmseg)."""
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
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


def save_initial_weights(cfg, path: str) -> None:
    """Save the weights a training run of ``cfg`` starts from (same seed) as a checkpoint,
    so that tools/test.py can measure what training adds."""
    from mmengine.runner import set_random_seed
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    set_random_seed(cfg.get('randomness', {}).get('seed', 0))
    model = build_model_from_config(cfg)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
