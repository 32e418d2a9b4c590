"""mmpretrain's ``ImageNet`` with the checks of bad data that it lacks.

Importing this module registers :class:`CheckedImageNet` in mmpretrain's DATASETS; the
ImageNet-1K configs import it (``custom_imports``) and use it as their dataset type.
"""
import warnings
from collections import defaultdict
from typing import List

from mmcv.transforms import LoadImageFromFile
from mmengine.fileio import list_from_file
from mmpretrain.datasets import ImageNet
from mmpretrain.registry import DATASETS

from .checks import (InvalidDataError, MissingDataError, check_image_complete, find_missing,
                     guard_transforms, quote_some, relative_names, require_paths)

LAYOUT = ("ImageNet is expected in mmpretrain's layout under data_root: train/ and val/ "
          "(image folders) and meta/train.txt and meta/val.txt (list files; README.md, "
          "'ImageNet-1K classification'); or point the config at your copy with "
          "--cfg-options on the dataloaders' dataset.data_root.")
LIST_FORMAT = ('each line of an ImageNet list file is an image path relative to the '
               'image folder, a space and its class index, e.g. '
               '"n01440764/n01440764_10026.JPEG 0"')


@DATASETS.register_module()
class CheckedImageNet(ImageNet):
    """``ImageNet`` that reports bad data with one clear error.

    When the dataset is built (before training starts) it raises:

    - ``ValueError`` naming the list file (``ann_file``, e.g. ``meta/train.txt``), the
      line number and the line, for a line that is not an image path and an integer class
      index (mmpretrain fails on it with an unpacking error that names no file);
    - ``ValueError`` naming the list file, the number of lines and the first of them, for
      class indices outside 0..N-1 (N: the classes of the metainfo, 1000 for ImageNet-1K);
      mmpretrain would fail in mixup's one-hot encoding or in the loss, naming nothing;
    - ``FileNotFoundError`` naming the first missing images, their number, the list file
      and the folder, for listed images that do not exist (mmpretrain would fail when the
      sample comes up, hours into training);
    - ``ValueError`` naming the list file and the first images, for an image listed twice
      with two class indices (it would be trained on with both, and counted wrong once in
      the accuracy). An image listed twice with the same index is a warning: it counts
      twice, which may be meant (oversampling).

    A JPEG image cut short (OpenCV decodes it with the missing part gray) raises
    ``ValueError`` naming it when it is loaded (files on a local disk).

    Args:
        check_files (bool): Check that the images exist when the dataset is built. Defaults
            to True; one ``exists`` call per image (seconds for ImageNet-1K on a local
            disk), set False for slow remote storage.
        **kwargs: Arguments of ``ImageNet`` (``data_root``, ``split``, ``ann_file``,
            ``data_prefix``, ``pipeline``, ``test_mode``, ...).
    """

    def __init__(self, *args, check_files: bool = True, **kwargs):
        self.check_files = check_files
        super().__init__(*args, **kwargs)
        guard_transforms(self.pipeline, LoadImageFromFile, check_image_complete)

    def load_data_list(self) -> List[dict]:
        """A missing image folder or list file is refused (with what the dataset expects);
        then mmpretrain's listing (a line of the list file that it cannot parse is named),
        then the checks of the class indices and the images."""
        if self.check_files:
            require_paths(type(self).__name__, [('image folder', self.img_prefix),
                                                ('list file', self.ann_file)],
                          LAYOUT, getattr(self, 'backend_args', None), self.data_root)
        try:
            data_list = super().load_data_list()
        except ValueError:  # a line mmpretrain cannot split or parse: name it
            if self.ann_file and self.with_label:
                self._check_list_lines()
            raise
        if self.with_label:
            self._check_labels(data_list)
            self._check_repeats(data_list)
        if self.check_files:
            self._check_images_exist(data_list)
        return data_list

    def _check_list_lines(self) -> None:
        """Raise ``ValueError`` naming the first line of the list file that is not an
        image path and a class index."""
        for number, line in enumerate(list_from_file(self.ann_file), 1):
            parts = line.strip().rsplit(' ', 1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise InvalidDataError(f'list file {self.ann_file!r}, line {number}: {line!r} '
                                       f'is not an image path and a class index: {LIST_FORMAT}')

    def _check_labels(self, data_list: List[dict]) -> None:
        classes = self.metainfo.get('classes')
        if not classes:
            return
        num_classes = len(classes)
        bad = [info for info in data_list if not 0 <= info['gt_label'] < num_classes]
        if bad:
            where = f'list file {self.ann_file!r}' if self.ann_file else 'the image folders'
            raise InvalidDataError(
                f'{len(bad)} of the {len(data_list)} images of {where} have a class index '
                f'outside 0..{num_classes - 1} (the {num_classes} classes of '
                f'{type(self).__name__}): ' +
                quote_some(f'{info["img_path"]} {info["gt_label"]}' for info in bad))

    def _check_repeats(self, data_list: List[dict]) -> None:
        labels = defaultdict(list)
        for info in data_list:
            labels[info['img_path']].append(info['gt_label'])
        repeated = {path: found for path, found in labels.items() if len(found) > 1}
        if not repeated:
            return
        where = f'list file {self.ann_file!r}' if self.ann_file else 'the image folders'
        conflicting = {path: found for path, found in repeated.items()
                       if len(set(found)) > 1}
        if conflicting:
            raise InvalidDataError(
                f'{where} lists {len(conflicting)} image(s) more than once, with different '
                f'class indices: ' + quote_some(
                    f'{relative_names([path], self.img_prefix)[0]} '
                    f'{"/".join(map(str, sorted(set(found))))}'
                    for path, found in conflicting.items()))
        warnings.warn(f'{where} lists {len(repeated)} image(s) more than once, with the '
                      f'same class index, so they count more than once: ' +
                      quote_some(relative_names(list(repeated), self.img_prefix)))

    def _check_images_exist(self, data_list: List[dict]) -> None:
        paths = [info['img_path'] for info in data_list]
        missing = find_missing(paths, getattr(self, 'backend_args', None))
        if missing:
            where = f' listed in {self.ann_file!r}' if self.ann_file else ''
            raise MissingDataError(
                f'{len(missing)} of the {len(paths)} images{where} do not exist in '
                f'{self.img_prefix!r}: {quote_some(relative_names(missing, self.img_prefix))}')
