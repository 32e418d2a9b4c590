"""mmdet's ``CocoDataset`` with the checks of bad data that it lacks.

Importing this module registers :class:`CheckedCocoDataset` in mmdet's DATASETS; the
detection configs import it (``custom_imports``) and use it as their dataset type.
"""
from typing import List

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from .checks import find_missing, quote_some, relative_names


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that fails early and clearly on missing images.

    mmdet's ``CocoDataset`` reads an image only when its sample is loaded, so an image
    that the annotation file lists but that is not on disk stops training whenever that
    sample comes up (hours in, or only at validation). This dataset checks, when it is
    built (before training starts), that every image it will read exists, and raises one
    ``FileNotFoundError`` naming the first missing files, their number, the annotation
    file and the folder it looked in.

    Annotations are otherwise parsed as ``CocoDataset`` does: boxes of no area (``w`` or
    ``h`` < 1, ``area`` <= 0, or outside the image) and ``ignore`` annotations are skipped;
    crowd boxes are kept as ignored instances. In training (``test_mode=False``) with
    ``filter_cfg=dict(filter_empty_gt=True)``, images without any usable annotation are
    dropped: those without annotations (as ``CocoDataset``) and also those whose
    annotations were all skipped (``CocoDataset`` keeps them as empty images). In testing
    every image is kept, so that ``CocoMetric`` counts false positives on empty images.

    Args:
        check_files (bool): Check that the images exist when the dataset is built.
            Defaults to True; one ``exists`` call per image (about a second for COCO
            train2017 on a local disk), set False for slow remote storage.
        **kwargs: Arguments of ``CocoDataset`` (``data_root``, ``ann_file``,
            ``data_prefix``, ``filter_cfg``, ``pipeline``, ``test_mode``, ...).
    """

    def __init__(self, *args, check_files: bool = True, **kwargs):
        self.check_files = check_files
        super().__init__(*args, **kwargs)

    def filter_data(self) -> List[dict]:
        """``CocoDataset``'s filtering, then images whose annotations were all skipped
        (with ``filter_empty_gt``, in training); then the check that the images exist."""
        data_list = super().filter_data()
        if not self.test_mode and (self.filter_cfg or {}).get('filter_empty_gt', False):
            data_list = [info for info in data_list if info['instances']]
        if self.check_files:
            self._check_images_exist(data_list)
        return data_list

    def _check_images_exist(self, data_list: List[dict]) -> None:
        paths = [info['img_path'] for info in data_list]
        missing = find_missing(paths, self.backend_args)
        if missing:
            folder = self.data_prefix.get('img', '')
            raise FileNotFoundError(
                f'{len(missing)} of the {len(paths)} images listed in {self.ann_file!r} '
                f'do not exist in {folder!r} (data_root={self.data_root!r} + '
                f'data_prefix img): {quote_some(relative_names(missing, folder))}')
