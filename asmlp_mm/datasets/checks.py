"""Checks of dataset files shared by the detection and segmentation datasets.

They turn bad data (images listed but absent, label maps without images, label values
outside the classes) into one clear error when the dataset is built or a sample is
loaded, instead of a failure deep inside training or a silently wrong metric. No toolbox
is imported here.
"""
import os.path as osp
from typing import Iterable, List, Optional, Sequence

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
