"""What the command-line tools share: the one config loader, the checks of their output
paths, and running a loop with its errors as messages.

``tools/train.py`` and ``tools/test.py`` serve every toolbox: the config's
``default_scope`` ('mmpretrain', 'mmdet' or 'mmseg') decides which builds the model,
datasets and metrics; nothing here depends on the task.
"""
import argparse
import logging
import os
import os.path as osp
import re
import sys
import traceback
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from ..checkpoint_io import CheckpointError, CheckpointMismatchError
from ..datasets.checks import DataError, require_paths
from ..fast.memory import keep_freed_memory
# the run-time fixes, which every run of the tools gets (the configs import them as well)
from ..runtime import adapt_to_device
from .fits import ConfigMismatchError
from .options import merge_cfg_options


def load_config(spec: str, cfg_options: Optional[dict] = None,
                model_names: bool = False) -> Config:
    """The config ``spec`` names, with ``cfg_options`` checked and merged in.

    Args:
        spec (str): A config file; a toolbox's own config (``mmpretrain::resnet/...py``);
            with ``model_names``, also an mmpretrain model name (``resnet50_8xb32_in1k``).
        cfg_options (dict, optional): ``--cfg-options``, checked by
            :func:`~asmlp_mm.engine.options.merge_cfg_options`.
        model_names (bool): Whether ``spec`` may be an mmpretrain model name.

    Raises:
        FileNotFoundError: No such config file.
        ValueError: Not a config, a config without a model, or an option that would
            change nothing (:class:`~asmlp_mm.engine.options.CfgOptionsError`).
    """
    if '::' in spec:
        from mmengine.hub import get_config
        cfg = get_config(spec)
    elif model_names and not spec.endswith('.py') and not osp.isfile(spec):
        from mmpretrain.apis import ModelHub
        try:
            cfg = ModelHub.get(spec).config
        except ValueError:
            raise ValueError(f'{spec!r} is neither a config file nor an mmpretrain model '
                             f'name (see mmpretrain.list_models())') from None
    else:
        if not osp.isfile(spec):
            raise FileNotFoundError(f'config {spec!r} does not exist')
        try:
            cfg = Config.fromfile(spec)
        except (OSError, SyntaxError) as err:  # not a .py/.yml/.json file; not Python
            raise ValueError(f'config {spec!r} cannot be read: {type(err).__name__}: '
                             f'{err}') from None
    if not isinstance(cfg.get('model'), dict):
        raise ValueError(f'config {spec!r} has no model')
    return merge_cfg_options(cfg, cfg_options, spec)


def add_common_args(parser: argparse.ArgumentParser):
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. train_dataloader.batch_size=4 '
        'train_dataloader.dataset.data_root=/data/coco/')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher (tools/dist_train.sh uses pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_run_config(args) -> Config:
    """The config of a train/test run (:func:`load_config`) with the arguments of
    :func:`add_common_args` applied, checked before anything is built."""
    try:
        cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err))
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_work_dir(cfg.work_dir)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    try:
        adapt_to_device(cfg)
    except ValueError as err:  # a launcher that needs CUDA
        raise SystemExit(str(err))
    keep_memory_on_cpu()
    return cfg


def missing_evaluator_file(cfg: Config, err: FileNotFoundError, key: str):
    """The message for ``err`` where it is an ``ann_file`` of the evaluator ``key``
    ('val_evaluator' or 'test_evaluator') that does not exist (COCO's metric opens it when
    it is built, after the datasets, with a traceback that names neither the evaluator nor
    the option to set); None for any other file."""
    if not key:
        return None
    evaluators = cfg.get(key)
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    loader = cfg.get(key.replace('evaluator', 'dataloader')) or {}
    data_root = (loader.get('dataset') or {}).get('data_root')
    for evaluator in evaluators:
        if not isinstance(evaluator, dict) or not evaluator.get('ann_file') or \
                str(evaluator['ann_file']) != str(err.filename):
            continue
        try:
            require_paths(f"{key} ({evaluator.get('type')})",
                          [('annotation file', evaluator['ann_file'])],
                          f'The metric reads the ground truth from it; set it with '
                          f'--cfg-options {key}.ann_file=PATH.',
                          evaluator.get('backend_args'), data_root)
        except DataError as data_error:
            return str(data_error)
    return None


def check_work_dir(path: str) -> None:
    """Refuse, before anything is built, a work dir that cannot be made or written to
    (mmengine fails with a traceback): one that is a file, lies under a file, or whose
    nearest existing folder is not writable. Makes nothing (every process of a distributed
    run checks at once)."""
    path = osp.abspath(path)
    existing = nearest_existing(path)
    if existing == path and not osp.isdir(path):
        raise SystemExit(f'work dir {path!r} cannot be made: it exists and is not a folder')
    if not osp.isdir(existing):
        raise SystemExit(f'work dir {path!r} cannot be made: {existing!r} is a file')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f'work dir {path!r} cannot be made: {existing!r} is not writable'
                         if existing != path else f'work dir {path!r} is not writable')


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


def keep_memory_on_cpu():
    """Without CUDA the model runs on the CPU: let glibc keep the memory it frees
    (:mod:`asmlp_mm.fast.memory`; ``ASMLP_MM_FAST=0`` turns this off)."""
    if not torch.cuda.is_available() and keep_freed_memory():
        print_log('CPU run: glibc keeps the memory it frees, for speed '
                  '(ASMLP_MM_FAST=0 to turn off)', logger='current')


_distributed_run = False


def shutdown_distributed():
    """Destroy the process group, if any, before the interpreter exits.

    mmengine never does: gloo's worker threads then may abort a finished process at exit
    ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489),
    and the launcher reports the whole run as failed.
    """
    global _distributed_run
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _distributed_run = True


def run_loop(run, runner, evaluator: str = ''):
    """``run()`` (``runner.train`` or ``runner.test``), then :func:`shutdown_distributed`.

    The fit checks that every config lists in ``custom_hooks``
    (configs/_base_/asmlp_runtime.py) raise on a checkpoint or a model that does not fit;
    they, missing or bad data found by the checked datasets (``DataError``) and a missing
    annotation file of the ``evaluator`` the run builds ('val_evaluator' or
    'test_evaluator'; :func:`missing_evaluator_file`) end the program with their message
    instead of a traceback.
    """
    try:
        return run()
    except (CheckpointError, CheckpointMismatchError, ConfigMismatchError) as err:
        raise SystemExit(str(err))
    except DataError as err:
        raise SystemExit(data_error_text(err))
    except FileNotFoundError as err:
        message = missing_evaluator_file(runner.cfg, err, evaluator)
        if message is None:
            raise
        raise SystemExit(message) from None
    finally:
        shutdown_distributed()


def data_error_text(err: BaseException) -> str:
    """What the tools print of a ``DataError``: its message and, where it wraps another
    error, that error's traceback (which points at the real problem).

    An error of a DataLoader worker reaches the main process as a new exception of the same
    type whose message is the worker's whole traceback ("Caught InvalidDataError in
    DataLoader worker process 0. Original Traceback ..."); it is taken apart again, so that
    a worker's error reads as the same error raised in the main process.
    """
    text = str(err)
    header = _WORKER_ERROR.match(text)
    if header is None:
        cause = err.__cause__
        if cause is None:
            return text
        return text + '\n\ncaused by:\n' + ''.join(
            traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
    kind = type(err).__qualname__
    if type(err).__module__ not in ('builtins', '__main__'):
        kind = f'{type(err).__module__}.{kind}'
    tracebacks, found, message = text.rpartition(f'\n{kind}: ')
    if not found:  # not the layout of torch's ExceptionWrapper: print it as it is
        return text
    where = f' (in DataLoader worker process {header.group(1)})'
    cause, linked, _ = tracebacks.partition(_CAUSE_LINK)
    if not linked:
        return message.rstrip() + where
    cause = cause[header.end():].lstrip('\n')
    return message.rstrip() + where + '\n\ncaused by:\n' + cause.rstrip()


# torch.utils.data's ExceptionWrapper: "Caught {type} in DataLoader worker process {n}.\n
# Original {traceback}"; and the line Python writes between a cause and its consequence
_WORKER_ERROR = re.compile(r'Caught \w+ in DataLoader worker process (\d+)\.\nOriginal ')
_CAUSE_LINK = '\nThe above exception was the direct cause of the following exception:\n'


def exit_after_success():
    """End a process whose run has finished, skipping the interpreter's teardown after a
    distributed run.

    Destroying the process group is not always enough: a gloo thread destroyed during the
    C++ static teardown still aborts the odd finished process (seen twice in this
    project's two-process test runs). Everything the run wrote is closed by then; the logs are
    flushed here, and the exit code is 0, as for a normal exit.
    """
    if not _distributed_run:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
