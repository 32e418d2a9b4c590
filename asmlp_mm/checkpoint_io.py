"""The one reader of checkpoint files in this package: :func:`load_local_checkpoint`.

mmengine's loaders of local files and URLs go through it where :mod:`asmlp_mm.runtime` is
imported (``load_from``, ``--resume``, ``load_checkpoint``); the package's own loading
(``ASMLP``'s ``init_cfg=dict(type='Pretrained')``, the tools) always does
(:func:`read_checkpoint`). It unpickles tensors, plain data and what
mmengine's training checkpoints hold; an object of any other class
comes back as a :class:`ForeignObject`, an inert record of what the file says about it:
nothing the file names is imported, and none of its code runs.
"""
import _compat_pickle
import fnmatch
import os
import os.path as osp
import pickle
import re
import types
import urllib.parse
import zipfile
from collections import Counter
from typing import List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .ops.torch_compat import weights_only_globals


class CheckpointError(RuntimeError):
    """A file given as a checkpoint cannot be read as one."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist (tools/train.py and test.py end with its
    message, as for any :class:`CheckpointError`)."""


class ForeignObject:
    """What :func:`load_local_checkpoint` puts where a checkpoint pickles an object of a
    class it does not load (the yacs config in the authors' classifier checkpoints, for
    instance), or the result of calling a function it does not allow. Each such class or
    function gets a subclass whose ``pickled_global`` names it ('module.qualname'); its
    instances keep, inert, what the file would have done:

    Attributes:
        args (tuple), kwargs (dict): the arguments the class or function was called with.
        state: the state the object was given (what its ``__setstate__`` would get).
        entries (dict), elements (list): the items and elements put into it (the file's
            object is a dict or list subclass, e.g. a yacs ``CfgNode``).

    Such an object cannot be pickled again: saving a checkpoint that holds one fails
    with a ``TypeError`` that names it.
    """
    pickled_global = '?'

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.entries, obj.elements = None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass  # a call of the class: __new__ kept the arguments

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.entries[key] = value

    def append(self, value):
        self.elements.append(value)

    def extend(self, values):
        self.elements.extend(values)

    def __reduce__(self):
        raise TypeError(f'cannot pickle a stand-in for {self.pickled_global}: the '
                        f'checkpoint it comes from was loaded without unpickling it')

    def __repr__(self):
        return f'<{self.pickled_global} (not unpickled)>'


def foreign_objects(obj) -> List[Tuple[str, str]]:
    """(where, ``pickled_global``) of the :class:`ForeignObject` subclasses and instances
    in the dicts, lists, tuples and sets of ``obj``, e.g.
    ``("['config']", 'yacs.config.CfgNode')``."""
    found, seen = [], set()

    def walk(value, where):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, ForeignObject) or (isinstance(value, type)
                                                and issubclass(value, ForeignObject)):
            found.append((where, value.pickled_global))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key, f'{where} (a key)')
                walk(item, f'{where}[{key!r}]')
        elif isinstance(value, (list, tuple, set, frozenset)):
            for i, item in enumerate(value):
                walk(item, f'{where}[{i}]')

    walk(obj, '')
    return found


class CheckpointRefusal(pickle.UnpicklingError):
    """The checkpoint asks the unpickler for something that no checkpoint needs."""


#: The ``getattr`` calls that mmengine's training checkpoints pickle: their top-level
#: ``message_hub`` entry holds HistoryBuffer's statistics methods, pickled (protocol 2) as
#: ``getattr(HistoryBuffer, 'min')``.
HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _mmengine_globals():
    """The classes and functions that mmengine's training checkpoints pickle besides
    tensors and plain data: the ``message_hub`` entry holds :class:`HistoryBuffer` objects
    with numpy arrays, the runtime information numpy scalars. (``getattr`` is allowed as
    :meth:`_RestrictedLoad.getattr` only.)"""
    try:  # numpy >= 2 (also present as an alias in numpy 1.26)
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct,
               multiarray.scalar]
    # under the names that numpy 1 and numpy 2 pickle them with
    for package in ('numpy.core', 'numpy._core'):
        allowed += [(multiarray._reconstruct, f'{package}.multiarray._reconstruct'),
                    (multiarray.scalar, f'{package}.multiarray.scalar')]
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                            np.int16, np.int32, np.int64, np.uint8,
                                            np.bool_)]
    return allowed


def _allowed_globals() -> dict:
    """'module.qualname' -> object, for every class and function the reader loads: those
    that torch's ``weights_only`` loading allows (tensors, storages, dtypes, OrderedDict,
    ..., and what ``torch.serialization.add_safe_globals`` added) and
    :func:`_mmengine_globals`."""
    allowed = weights_only_globals()
    for entry in _mmengine_globals():
        obj, path = entry if isinstance(entry, tuple) else (
            entry, f'{entry.__module__}.{entry.__qualname__}')
        allowed[path] = obj
    return allowed


class _RestrictedLoad:
    """The unpickling of one checkpoint file: :meth:`find_class` hands out the allowed
    classes and functions (:func:`_allowed_globals`) and, for any other name, a
    :class:`ForeignObject` subclass, without importing anything. The standard unpickler
    gets every class and function through ``find_class``, so nothing else can be called.

    ``pickle_module`` is what ``torch.load`` takes as its ``pickle_module`` (it subclasses
    its ``Unpickler``, for the storages); ``foreign`` collects the names replaced.
    """

    def __init__(self):
        self.allowed = _allowed_globals()
        self.allowed['builtins.getattr'] = self.getattr
        self.foreign = {}
        load = self

        class Unpickler(pickle.Unpickler):

            def find_class(self, module, name):
                return load.find_class(module, name)

        def load_one(file, **kwargs):
            return Unpickler(file, **kwargs).load()

        self.pickle_module = types.SimpleNamespace(__name__='asmlp_mm restricted pickle',
                                                   Unpickler=Unpickler, load=load_one)

    def find_class(self, module: str, name: str):
        # torch.save pickles with protocol 2, which writes Python 2's names
        # ('__builtin__.getattr'); pickle's own find_class maps them back
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        path = f'{module}.{name}'
        if path in self.allowed:
            return self.allowed[path]
        return self.foreign_type(path)

    def foreign_type(self, path: str) -> type:
        if path not in self.foreign:
            self.foreign[path] = type(f'ForeignObject[{path}]', (ForeignObject, ),
                                      {'pickled_global': path})
        return self.foreign[path]

    def getattr(self, obj, name):
        """``getattr`` for the files: an attribute of a foreign class or object is foreign
        as well; of the rest, only what mmengine's checkpoints fetch with it
        (:data:`HISTORY_BUFFER_STATISTICS` and other registered statistics of
        :class:`HistoryBuffer`). A plain ``getattr`` would let a pickle walk from an
        allowed class to any object, e.g. to ``eval`` through a method's ``__globals__``."""
        if type(name) is not str:
            raise CheckpointRefusal(f'refusing getattr({obj!r}, {name!r}): the name is no '
                                    f'string')
        if isinstance(obj, ForeignObject) or (isinstance(obj, type)
                                              and issubclass(obj, ForeignObject)):
            return self.foreign_type(f'{obj.pickled_global}.{name}')
        if (obj is HistoryBuffer and not name.startswith('_')
                and (name in HISTORY_BUFFER_STATISTICS
                     or name in getattr(HistoryBuffer, '_statistics_methods', {}))):
            return getattr(obj, name)
        raise CheckpointRefusal(f'refusing getattr({obj!r}, {name!r}): not an attribute '
                                f'that mmengine checkpoints pickle')


def _is_torchscript(filename: str) -> bool:
    """Whether ``filename`` is a TorchScript archive (``torch.jit.save``), which
    ``torch.load`` would hand to ``torch.jit.load``, with its code."""
    try:
        with zipfile.ZipFile(filename) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):  # torch's legacy format, or no checkpoint
        return False
    return any(name.split('/', 1)[-1] == 'constants.pkl' for name in names)


def load_local_checkpoint(filename, map_location=None):
    """Read a checkpoint file without running anything in it.

    It reads what ``torch.load(weights_only=True)`` reads (tensors, storages, dtypes,
    dicts, lists, tuples, strings, numbers, OrderedDict, what
    ``torch.serialization.add_safe_globals`` allowed) and what mmengine's training
    checkpoints pickle besides (numpy arrays and scalars, :class:`HistoryBuffer` and the
    ``getattr`` calls that fetch its statistics methods). Every other class or function
    the file names becomes a :class:`ForeignObject` subclass, and one log line lists
    them: nothing is imported, no pickled ``__reduce__`` runs. (mmengine 0.10.7 calls
    ``torch.load`` with torch's default, which is ``weights_only=True`` since torch 2.6,
    and refuses its own training checkpoints then.)

    Raises:
        CheckpointNotFoundError: ``filename`` is no file.
        CheckpointError: it is no checkpoint written by ``torch.save`` (e.g. text, a
            truncated file, a TorchScript archive), or it fetches attributes no
            checkpoint needs (a way to reach code through allowed classes).
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'checkpoint {filename!r} does not exist')
    if _is_torchscript(filename):
        raise CheckpointError(f'{filename!r} is a TorchScript archive (torch.jit.save), not '
                              f'a checkpoint: it holds a compiled model, for torch.jit.load')
    load = _RestrictedLoad()
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=False,
                                pickle_module=load.pickle_module)
    except CheckpointRefusal as err:
        raise CheckpointError(f'{filename!r} asks the unpickler for something that no '
                              f'checkpoint needs; refusing to load it: {err}') from err
    except Exception as err:  # torch and pickle raise several types for broken files
        raise _unreadable(filename, err) from err
    if load.foreign:
        print_log(f'{filename}: not unpickled (an inert ForeignObject stands in for each, '
                  f'nothing of them is imported or run): {", ".join(sorted(load.foreign))}',
                  logger='current')
    return checkpoint


def load_url_checkpoint(url: str, map_location=None, model_dir: Optional[str] = None,
                        progress: bool = os.isatty(0)):
    """mmengine's loader of http(s) checkpoints, reading the download with
    :func:`load_local_checkpoint`: mmengine's own reads it with
    ``torch.hub.load_state_dict_from_url``, whose ``torch.load`` unpickles anything.

    The file is downloaded as torch.hub does (into ``<torch hub dir>/checkpoints`` unless
    ``model_dir`` is given, once), by the first process of a distributed run while the
    others wait.
    """
    rank, world_size = get_dist_info()
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(model_dir, osp.basename(urllib.parse.urlparse(url).path))
    if rank == 0 and not osp.isfile(path):
        os.makedirs(model_dir, exist_ok=True)
        print_log(f'downloading {url} to {path}', logger='current')
        torch.hub.download_url_to_file(url, path, progress=progress)
    if world_size > 1:
        barrier()
    return load_local_checkpoint(path, map_location)


def read_checkpoint(filename, map_location=None):
    """A checkpoint by path or URL: local files by :func:`load_local_checkpoint`, http(s)
    by :func:`load_url_checkpoint`, mmengine's other schemes (``s3://``,
    ``torchvision://``, ...) by its ``CheckpointLoader``. The package's own loading goes
    through here, so that it reads safely whether or not :mod:`asmlp_mm.runtime` has
    routed mmengine's loader to these readers."""
    filename = str(filename)
    if filename.startswith(('http://', 'https://')):
        return load_url_checkpoint(filename, map_location)
    if '://' in filename:
        return CheckpointLoader.load_checkpoint(filename, map_location)
    return load_local_checkpoint(filename, map_location)


def weights_only_refusal(err: BaseException) -> str:
    """What torch's weights-only unpickler refused, in its first sentence ('Unsupported
    global: GLOBAL argparse.Namespace was not an allowed global by default.', or
    'Unsupported operand 110' for bytes that are no checkpoint), without the advice around
    it that torch adds (to load with ``weights_only=False``) and its terminal colours; of
    any other error, the first sentence of its first line."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(err))
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return re.split(r'(?<=\.) (?=[A-Z])', lines[0], maxsplit=1)[0]


def _unreadable(filename, err):
    detail = weights_only_refusal(err) if str(err) else ''
    return CheckpointError(f'cannot load {filename!r} as a PyTorch checkpoint: expected a file '
                           f'written by torch.save (e.g. by tools/train.py). '
                           f'{type(err).__name__}: {detail}')


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


#: the kinds of :func:`state_dict_mismatches`' problems, by how each begins
MISMATCH_KINDS = ('missing in the checkpoint', 'shape of', 'not in the model')


def describe_mismatches(source: str, problems: List[str], what: str, limit: int = 8,
                        hint: str = '') -> str:
    """The error message for ``problems`` (:func:`state_dict_mismatches`'): at most
    ``limit`` of each kind (so that hundreds of wrong shapes do not hide the missing
    keys), after the ``hint`` (e.g. :func:`prefix_hint`), which the limit must not cut
    off."""
    lines = []
    for kind in MISMATCH_KINDS:
        of_kind = [p for p in problems if p.startswith(kind)]
        lines += of_kind[:limit]
        if len(of_kind) > limit:
            lines.append(f'... and {len(of_kind) - limit} more like these')
    hint = f'\n  {hint}' if hint else ''
    return (f'checkpoint {source!r} does not fit {what}: {len(problems)} problem(s)'
            f'{hint}\n  ' + '\n  '.join(lines))


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model it is loaded into."""


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
    state = checkpoint_state_dict(read_checkpoint(path, map_location='cpu'), path, prefix)
    check_fits(module, state, path, what, optional=optional)
    missing, _ = module.load_state_dict(state, strict=False)
    return list(missing)
