"""Checks of dataset files shared by the classification, detection and segmentation datasets.

They turn bad data (images listed but absent, JPEG files cut short, label maps without
images, label values outside the classes, annotation files that are not JSON) into one
clear error when the dataset is built or a sample is loaded, instead of a failure deep
inside training or a silently wrong metric; and they hook checks into the loading
transforms of a pipeline. No toolbox is imported here.
"""
import json
import os
import os.path as osp
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmengine.fileio import LocalBackend, get_file_backend
from PIL import Image

SHOWN = 5  # names quoted in an error; the rest are counted


class DataError(Exception):
    """Missing or bad data found by a checked dataset. ``tools/train.py`` and
    ``tools/test.py`` print its message and exit instead of a traceback."""


class MissingDataError(DataError, FileNotFoundError):
    """Files or folders of a dataset that do not exist."""


class InvalidDataError(DataError, ValueError):
    """Dataset files that exist but hold what the dataset cannot use."""


def require_paths(dataset: str, paths: Sequence[Tuple[str, str]], layout: str,
                  backend_args: Optional[dict] = None,
                  data_root: Optional[str] = None) -> None:
    """Raise :class:`MissingDataError` for the first of ``paths`` (pairs of what it is and
    the path) that does not exist: its name, the path and, for a relative local path, the
    folder it was looked for in; where it exists one folder below ``data_root`` (the
    folder of the dataset's parent given as its root), that folder; then ``layout``, what
    the dataset expects and how to point the config at it. Empty paths, and paths of a
    storage that cannot tell whether a path exists (mmengine's HTTP backend), are
    skipped."""
    for what, path in paths:
        if not path:
            continue
        backend = get_file_backend(path, backend_args=backend_args)
        if not hasattr(backend, 'exists') or backend.exists(path):
            continue
        where = ''
        if isinstance(backend, LocalBackend) and not osp.isabs(path):
            where = f' (looked for in {os.getcwd()!r})'
        if isinstance(backend, LocalBackend):
            below = _one_folder_below(path, data_root)
            if below:
                where += (f'; it is in {below!r}, one folder down: '
                          f'set data_root={below!r}')
        raise MissingDataError(f'{dataset}: the {what} {path!r} does not exist{where}. '
                               f'{layout}')


def _one_folder_below(path: str, data_root: Optional[str]) -> Optional[str]:
    """The subfolder of the local folder ``data_root`` in which ``path`` (which lies under
    ``data_root``) exists, if exactly one has it."""
    if not data_root or not osp.isdir(data_root):
        return None
    relative = osp.relpath(path, data_root)
    if relative.startswith(os.pardir):
        return None
    found = [osp.join(data_root, name) for name in sorted(os.listdir(data_root))
             if osp.isdir(osp.join(data_root, name))
             and osp.exists(osp.join(data_root, name, relative))]
    return found[0] if len(found) == 1 else None


def find_missing(paths: Sequence[str], backend_args: Optional[dict] = None) -> List[str]:
    """The paths of ``paths`` that do not exist (one storage backend, from the first)."""
    if not paths:
        return []
    backend = get_file_backend(paths[0], backend_args=backend_args)
    return [p for p in paths if not backend.exists(p)]


def quote_some(names: Iterable[str], shown: int = SHOWN) -> str:
    """``'a', 'b', 'c' and 7 more`` (the first ``shown`` names, the rest counted)."""
    names = list(names)
    text = ', '.join(repr(n) for n in names[:shown])
    if len(names) > shown:
        text += f' and {len(names) - shown} more'
    return text


def relative_names(paths: Sequence[str], folder: str) -> List[str]:
    """``paths`` relative to ``folder`` where they lie under it, else unchanged."""
    folder = folder.rstrip('/\\')
    if not folder:
        return list(paths)
    return [osp.relpath(p, folder) if p.startswith(folder) else p for p in paths]


def bad_label_values(values: Iterable[int], num_classes: int, ignore_index: int) -> List[int]:
    """The label values that are neither a class index (0..num_classes-1) nor ignored."""
    return sorted(int(v) for v in values
                  if int(v) != ignore_index and not 0 <= int(v) < num_classes)


def read_json(local_path: str, name: str):
    """The content of the JSON file at ``local_path``; a ``ValueError`` naming ``name``
    (the file as the user gave it: ``local_path`` may be a temporary copy) and the
    place of the error if it is not valid JSON (e.g. a file cut short in copying)."""
    with open(local_path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise InvalidDataError(f'annotation file {name!r} is not valid JSON: {err} (a file '
                                   f'cut short in copying or downloading?)') from err
        except UnicodeDecodeError as err:
            raise InvalidDataError(f'annotation file {name!r} is not a JSON text file: '
                                   f'{err}') from err


class Guarded:
    """A pipeline transform run by ``guard(transform, results)``, which calls it and
    checks what it loaded (raising on bad data); see :func:`guard_transforms`."""

    def __init__(self, transform: Callable, guard: Callable):
        self.transform = transform
        self.guard = guard

    def __call__(self, results: dict) -> Optional[dict]:
        return self.guard(self.transform, results)

    def __repr__(self) -> str:
        return repr(self.transform)


def transform_slots(node) -> Iterator[Tuple[list, int]]:
    """``(list, index)`` of every transform of a pipeline (a ``Compose``), also of those
    inside wrappers: ``Compose``, ``RandomChoice``, ``RandomApply``, ``KeyMapper``
    (``transforms``) and ``TestTimeAug`` (``subroutines``)."""
    for attr in ('transforms', 'subroutines'):
        held = getattr(node, attr, None)
        if isinstance(held, list):
            for index, child in enumerate(held):
                yield held, index
                yield from transform_slots(child)
        elif held is not None:
            yield from transform_slots(held)


def find_transforms(pipeline, types) -> list:
    """The transforms of ``pipeline`` (see :func:`transform_slots`) that are ``types``."""
    return [held[i] for held, i in transform_slots(pipeline) if isinstance(held[i], types)]


def guard_transforms(pipeline, types, guard: Callable) -> int:
    """Run every transform of ``pipeline`` that is ``types`` through ``guard`` (in place:
    see :class:`Guarded`), so that what it loads is checked before later transforms
    (resizing, cropping) change it, in training, testing and test-time augmentation
    alike. Returns the number of transforms guarded."""
    slots = [(held, i) for held, i in transform_slots(pipeline) if isinstance(held[i], types)]
    for held, i in slots:
        held[i] = Guarded(held[i], guard)
    return len(slots)


def local_file(path: str, backend_args: Optional[dict] = None) -> Optional[str]:
    """``path`` if it is a file on a local disk (the checks that read files again read only
    local ones: on remote storage that would mean a second download), else ``None``."""
    if not isinstance(path, str):
        return None
    backend = get_file_backend(path, backend_args=backend_args)
    return path if isinstance(backend, LocalBackend) and osp.isfile(path) else None


JPEG_START = b'\xff\xd8'
JPEG_END = b'\xff\xd9'


def jpeg_cut_short(path: str, tail_bytes: int = 1024) -> bool:
    """Whether ``path`` is a JPEG file that ends before its end-of-image marker (cut short
    in copying or downloading). OpenCV decodes such a file without an error, with the
    missing part gray. A file that ends with the marker (zero bytes or white space after
    it allowed) is read no further than its last ``tail_bytes``; others (data appended
    after the image, or a file cut short) are decoded by pillow, which stops with an error
    where the data ends early (``tail_bytes=0``: every file). Not a JPEG file: ``False``."""
    with open(path, 'rb') as f:
        if f.read(2) != JPEG_START:
            return False
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - tail_bytes, 0))
        if f.read().rstrip(b'\x00 \t\r\n').endswith(JPEG_END):
            return False
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError):  # "image file is truncated", a header cut short
        return True
    return False


def check_image_complete(load: Callable, results: dict) -> Optional[dict]:
    """Check that the image file (``results['img_path']``, when on a local disk) is not a
    JPEG cut short, then load it (``load``: the pipeline's ``LoadImageFromFile``)."""
    path = local_file(results.get('img_path'), getattr(load, 'backend_args', None))
    if path is not None and jpeg_cut_short(path):
        raise InvalidDataError(f'image {path!r} is cut short: its JPEG data ends before the '
                               f'end-of-image marker (a file cut short in copying or '
                               f'downloading?). OpenCV would decode it with the missing part '
                               f'gray; copy the file again')
    return load(results)
