"""Checks of dataset files shared by the detection and segmentation datasets.

They turn bad data (images listed but absent, label maps without images, label values
outside the classes, annotation files that are not JSON) into one clear error when the
dataset is built or a sample is loaded, instead of a failure deep inside training or a
silently wrong metric; and they hook checks into the loading transforms of a pipeline.
No toolbox is imported here.
"""
import json
import os.path as osp
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from mmengine.fileio import get_file_backend

SHOWN = 5  # names quoted in an error; the rest are counted


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
            raise ValueError(f'annotation file {name!r} is not valid JSON: {err} (a file '
                             f'cut short in copying or downloading?)') from err
        except UnicodeDecodeError as err:
            raise ValueError(f'annotation file {name!r} is not a JSON text file: '
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
