"""Crash-safe checkpoint files.

mmengine writes a checkpoint by opening the final path and writing into it, so a process
killed during the save leaves a truncated file that ``last_checkpoint`` may already name
(or that ``--resume`` finds). Here every local write goes to a temporary file in the same
folder and is renamed over the target only once complete, and resuming picks the newest
checkpoint that actually loads (read, as every checkpoint file, by
:func:`asmlp_mm.checkpoint_io.load_local_checkpoint`). :class:`CheckpointFitsHook`
refuses, as it is loaded, a checkpoint that does not fit the model.
"""
import fnmatch
import glob
import os
import os.path as osp
import re
import tempfile
from collections import Counter
from typing import List, Optional

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from ..checkpoint_io import CheckpointError, load_local_checkpoint


def _mode_of_a_new_file() -> int:
    """The permissions ``open(path, 'w')`` gives a new file: 0o666 less the umask."""
    try:  # Linux says the umask without changing it, which other threads would see
        with open('/proc/self/status') as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


class AtomicLocalBackend(LocalBackend):
    """Local file backend whose writes are atomic (temporary file, fsync, rename).

    The file gets the permissions a plain write would give it (``mkstemp`` alone would
    make every checkpoint readable by its owner only).
    """

    def put(self, obj: bytes, filepath) -> None:
        filepath = str(filepath)
        folder = osp.dirname(osp.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=osp.basename(filepath))
        try:
            os.fchmod(fd, _mode_of_a_new_file())
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


def use_atomic_local_writes() -> None:
    """Make mmengine's default local backend the atomic one (checkpoints, dumps)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')


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


def state_dict_mismatches(model_state: dict, loaded: dict, optional=()) -> List[str]:
    """Human-readable differences between a model's state dict and a loaded one.

    Keys matching one of the ``optional`` glob patterns may be absent on either side.
    """
    def is_optional(key):
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in optional)

    problems = []
    for key, value in model_state.items():
        if key not in loaded:
            if not is_optional(key):
                problems.append(f'missing in the checkpoint: {key}')
        elif tuple(loaded[key].shape) != tuple(value.shape):
            problems.append(f'shape of {key}: {tuple(loaded[key].shape)} in the checkpoint, '
                            f'{tuple(value.shape)} in the model')
    problems += [f'not in the model: {key}' for key in loaded
                 if key not in model_state and not is_optional(key)]
    return problems


def prefix_in_checkpoint(model_state: dict, loaded: dict) -> Optional[str]:
    """The prefix under which ``loaded`` holds the model's keys when it holds none of them
    as they are, else None.

    A detector's checkpoint holds its backbone's weights under 'backbone.': loaded into the
    backbone without ``prefix='backbone.'``, every key is both missing and unexpected, and
    the listed problems do not say why. The prefix must hold at least half of the model's
    keys (a checkpoint of another arch still holds most of them).
    """
    if not model_state or any(key in model_state for key in loaded):
        return None
    counts = Counter(key[:i + 1] for key in loaded for i, char in enumerate(key)
                     if char == '.' and key[i + 1:] in model_state)
    if not counts:
        return None
    prefix, count = counts.most_common(1)[0]
    return prefix if 2 * count >= len(model_state) else None


def prefix_hint(model_state: dict, loaded: dict, prefix_option: str = '') -> str:
    """A sentence naming the prefix that separates the keys of ``loaded`` from the model's,
    '' where there is none.

    Either the checkpoint holds the model's keys under a prefix (see
    :func:`prefix_in_checkpoint`; the sentence tells to set it in ``prefix_option``, e.g.
    'init_cfg', when the caller has one), or the model holds the checkpoint's keys under
    one: a backbone's checkpoint given to a whole detector, whose keys all start with
    'backbone.'.
    """
    prefix = prefix_in_checkpoint(model_state, loaded)
    if prefix is not None:
        hint = (f"none of its keys is one of the model's, but its keys start with "
                f"{prefix!r} followed by the model's")
        return hint + (f': set prefix={prefix!r} in {prefix_option}' if prefix_option else '')
    part = prefix_in_checkpoint(loaded, model_state)  # the model holds the checkpoint
    if part is None:
        return ''
    hint = (f"none of its keys is one of the model's, but the model's keys start with "
            f"{part!r} followed by the checkpoint's: it holds the weights of the model's "
            f"{part[:-1]!r} only")
    if part.count('.') == 1:  # a direct submodule, which takes an init_cfg
        hint += (f"; load them into it with model.{part}init_cfg=dict(type='Pretrained', "
                 "checkpoint=...)")
    return hint


def describe_mismatches(source: str, problems: List[str], what: str, limit: int = 8,
                        hint: str = '') -> str:
    """The error message for ``problems``: at most ``limit`` of them, after the ``hint``
    (e.g. :func:`prefix_hint`), which the limit must not cut off."""
    shown = '\n  '.join(problems[:limit])
    more = f'\n  ... and {len(problems) - limit} more' if len(problems) > limit else ''
    hint = f'\n  {hint}' if hint else ''
    return (f'checkpoint {source!r} does not fit {what}: {len(problems)} problem(s)'
            f'{hint}\n  {shown}{more}')


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model it is loaded into."""


def unwrap(model):
    """The model of the config inside DDP and test-time-augmentation wrappers."""
    model = model.module if is_model_wrapper(model) else model
    return model.module if isinstance(model, BaseTTAModel) else model


def checkpoint_state_dict(checkpoint, source: str, prefix: str = '') -> dict:
    """The weights of a loaded checkpoint (``module.`` dropped), those under ``prefix``
    with the prefix removed when one is given."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) \
        else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f'checkpoint {source!r} holds no state dict')
    state = {re.sub(r'^module\.', '', key): value for key, value in state.items()}
    if prefix:
        state = {key[len(prefix):]: value for key, value in state.items()
                 if key.startswith(prefix)}
    return state


def check_fits(module, state: dict, source: str, what: str, optional=(),
               prefix_option: str = '') -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` fits ``module`` exactly
    (keys matching the ``optional`` glob patterns may be absent on either side). Where
    ``state`` holds the module's keys under a prefix, the error names it (and
    ``prefix_option``, where the caller lets one set it)."""
    model_state = module.state_dict()
    problems = state_dict_mismatches(model_state, state, optional)
    if problems:
        raise CheckpointMismatchError(describe_mismatches(
            source, problems, what, hint=prefix_hint(model_state, state, prefix_option)))


def load_fitting_weights(module, path: str, what: str, prefix: str = '',
                         optional=()) -> List[str]:
    """Load the weights of the checkpoint ``path`` (under ``prefix``) into ``module``,
    or raise :class:`CheckpointMismatchError` listing what does not fit. Keys matching the
    ``optional`` glob patterns may be absent on either side; returns the module's keys
    that the checkpoint did not have (they keep their values)."""
    state = checkpoint_state_dict(load_local_checkpoint(path, map_location='cpu'), path,
                                  prefix)
    check_fits(module, state, path, what, optional=optional)
    missing, _ = module.load_state_dict(state, strict=False)
    return list(missing)


def starts_from_load_from(runner) -> bool:
    """Whether the runner trains from ``load_from`` rather than testing or resuming (a
    train loop is built only by ``runner.train()``)."""
    from mmengine.runner import BaseLoop
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
        from ..models.weights import is_published_layout
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
        from mmengine.dist import get_world_size
        checkpoint.setdefault('meta', {})['world_size'] = get_world_size()

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        from mmengine.dist import get_world_size
        saved = (checkpoint.get('meta') or {}).get('world_size')
        now = get_world_size()
        if getattr(runner, '_resume', False) and saved is not None and saved != now:
            runner.logger.warning(
                f'resuming a checkpoint of a run of {saved} process(es) with {now}: the '
                f'total batch changes by {now}/{saved}, but the learning rate stays the '
                f'checkpoint\'s (resuming restores it; --auto-scale-lr does not rescale it '
                f'then). Resume with {saved} process(es) to continue the same run.')
