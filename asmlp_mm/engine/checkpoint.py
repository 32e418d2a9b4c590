"""Checkpoints in a run: which one to resume, and whether the loaded one fits.

:func:`find_resumable_checkpoint` picks the newest checkpoint of a work dir that actually
loads (a save cut off by a crash leaves one that does not, where mmengine's writes are not
made atomic by :mod:`asmlp_mm.runtime`). :class:`CheckpointFitsHook` refuses, as it is
loaded, a checkpoint that does not fit the model; :class:`ProcessCountHook` warns when a
run resumes with another number of processes.
"""
import glob
import os.path as osp
import re
from typing import Optional

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from ..checkpoint_io import (CheckpointError, CheckpointMismatchError, check_fits,
                             checkpoint_state_dict, describe_mismatches,
                             load_local_checkpoint, prefix_hint, state_dict_mismatches)
from ..models.weights import is_published_layout


def _checkpoint_order(path: str):
    numbers = re.findall(r'\d+', osp.basename(path))
    return (int(numbers[-1]) if numbers else -1, osp.getmtime(path))


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint in ``work_dir`` that loads, or None.

    Tries the file named by ``last_checkpoint`` first, then ``*.pth`` files from the
    highest epoch/iteration down, skipping unreadable ones (e.g. cut off by a crash).
    Only files in ``work_dir`` count: ``last_checkpoint`` holds the path the checkpoint was
    saved under, which in a copied or moved work dir is the original folder's; its file
    of the same name in ``work_dir`` is taken instead.
    """
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named:
            candidates.append(osp.join(work_dir, osp.basename(named)))
    candidates += sorted(glob.glob(osp.join(work_dir, '*.pth')), key=_checkpoint_order,
                         reverse=True)
    for path in candidates:
        if not osp.isfile(path):
            continue
        try:
            load_local_checkpoint(path, map_location='cpu')
        except CheckpointError:
            continue
        return path
    return None


def unwrap(model):
    """The model of the config inside DDP and test-time-augmentation wrappers."""
    model = model.module if is_model_wrapper(model) else model
    return model.module if isinstance(model, BaseTTAModel) else model


def starts_from_load_from(runner) -> bool:
    """Whether the runner trains from ``load_from`` rather than testing or resuming (a
    train loop is built only by ``runner.train()``)."""
    return isinstance(runner._train_loop, BaseLoop) and not runner._resume


@HOOKS.register_module()
class CheckpointFitsHook(Hook):
    """Refuses a checkpoint that does not fit the model, when the runner loads it.

    The runner loads ``load_from`` non-strictly: a checkpoint of another arch or config
    only logs warnings, and testing then evaluates a partly initialized model. This hook
    sees the checkpoint once the runner has read it and before it goes into the model
    (``after_load_checkpoint``, so the file is read once) and raises
    :class:`CheckpointMismatchError` listing the missing, unexpected and mis-shaped keys.
    The configs list it in ``custom_hooks``, so every tool that runs them (this
    repository's, mmdet's, mmseg's, mmpretrain's, ``mim``) checks.

    Args:
        exact (bool, optional): Refuse any mismatch. False refuses only a checkpoint of
            which not one weight would load (fine-tuning from ``load_from`` may leave out a
            few, e.g. a classifier head of another number of classes). Defaults to None:
            exact when testing or resuming, not when training starts from ``load_from``.
    """

    def __init__(self, exact: Optional[bool] = None):
        self.exact = exact

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        model = unwrap(runner.model)
        source = runner.cfg.get('load_from')
        if is_published_layout(checkpoint):
            # a detector's would load its heads only (their names did not change), silently
            raise CheckpointMismatchError(
                f'checkpoint {source!r} is in the layout of the authors\' released code '
                f'(layers.*.blocks.*.axial_shift.*): convert it with '
                f'tools/model_converters/asmlp_to_mm.py and load the result')
        what = f'the model of this config ({type(model).__name__})'
        state = checkpoint_state_dict(checkpoint, source)
        exact = self.exact if self.exact is not None else not starts_from_load_from(runner)
        if exact:
            check_fits(model, state, source, what)
            return
        model_state = model.state_dict()
        if not any(key in model_state and tuple(value.shape) == tuple(model_state[key].shape)
                   for key, value in state.items()):
            problems = state_dict_mismatches(model_state, state)
            raise CheckpointMismatchError(describe_mismatches(
                source, problems, what + ' (not one of its weights would load)',
                hint=prefix_hint(model_state, state)))


@HOOKS.register_module()
class ProcessCountHook(Hook):
    """Records the number of processes in each checkpoint (``meta['world_size']``) and
    warns when a run resumes with another number.

    The total batch is the batch per process times the processes; resuming restores the
    optimizer's learning rate from the checkpoint, after ``--auto-scale-lr`` has scaled
    the config's, so a run resumed with other processes trains with another batch at the
    old learning rate. mmengine's own check of this compares ``cfg.gpu_ids``, which the
    tools of this repository (and mmengine's launchers) never set.
    """

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        checkpoint.setdefault('meta', {})['world_size'] = get_world_size()

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        saved = (checkpoint.get('meta') or {}).get('world_size')
        now = get_world_size()
        if getattr(runner, '_resume', False) and saved is not None and saved != now:
            runner.logger.warning(
                f'resuming a checkpoint of a run of {saved} process(es) with {now}: the '
                f'total batch changes by {now}/{saved}, but the learning rate stays the '
                f'checkpoint\'s (resuming restores it; --auto-scale-lr does not rescale it '
                f'then). Resume with {saved} process(es) to continue the same run.')
