"""Model size and cost, counted the way the paper counts them.

FLOPs here are multiply-accumulates (one MAC = one FLOP), as in the AS-MLP paper and most
vision papers; mmengine's FlopAnalyzer counts the same way. Parameters are all parameters
of the built model.
"""
import os
import os.path as osp
from typing import Optional, Sequence

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


def nearest_existing(path: str) -> str:
    """``path`` made absolute if it exists, else its nearest ancestor that does: the folder
    under which the folders a tool makes for it would start."""
    path = osp.abspath(path)
    while not osp.lexists(path):
        path = osp.dirname(path)
    return path


def output_file_problem(path: str, suffixes: Sequence[str] = ()) -> Optional[str]:
    """Why a tool could not write its output file ``path`` (None if it can), to say so
    before any work: no name, a folder, a suffix not in ``suffixes`` (with the dot, matched
    as written, since mmengine's DumpResults takes '.pkl' only; any if empty), or no
    writable folder where it would go (folders that do not exist yet are made by the
    tools, under the nearest existing one)."""
    if not path:
        return 'no file name given'
    if osp.isdir(path):
        return f'{path!r} is a folder; give the path of the file to write'
    if suffixes and osp.splitext(path)[1] not in suffixes:  # as written: '.pkl', not '.PKL'
        return f'{path!r}: name the file with one of the suffixes {", ".join(suffixes)}'
    folder = nearest_existing(osp.dirname(osp.abspath(path)))
    if not osp.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        return f'{path!r}: {folder!r} is not a writable folder'
    return None
