"""mmseg's ``ADE20KDataset`` with the checks of bad data that it lacks.

:class:`CheckedADE20KDataset` is mmseg's ``ADE20KDataset`` with checks of bad data (the
dataset type of the UperNet configs); :class:`ShapesADE20KDataset` is it with the shape
classes, so the demo config only swaps the dataset type. Importing this module registers
both in mmseg's DATASETS.
"""
import os.path as osp
from typing import List

import numpy as np
import torch
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmseg.datasets import ADE20KDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS
from PIL import Image

from .checks import (InvalidDataError, MissingDataError, bad_label_values, check_image_complete,
                     find_missing, guard_transforms, local_file, quote_some, relative_names,
                     require_paths)
from .shapes import SHAPE_CLASSES, SHAPE_PALETTE

LAYOUT = ('ADE20K is expected as ADEChallengeData2016 under data_root: '
          'images/{training,validation} and annotations/{training,validation} '
          '(docs/segmentation.md); or point the config at your copy with --cfg-options on '
          "the dataloaders' dataset.data_root.")

# pillow's modes of a single-channel 16-bit image
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I')
LABEL_MAP = ('a label map is a single-channel image (PNG of mode L or P) of class indices, '
             'of the size of its image')


def check_label_map(load, results: dict) -> dict:
    """Load the label map (``load``: the pipeline's ``LoadAnnotations``) and check that it
    could be read, has one channel and the size of its image (``ori_shape``, recorded when
    the image was loaded, before any resizing), before later transforms change it."""
    path = results.get('seg_map_path')
    try:
        results = load(results)
    except (FileNotFoundError, AssertionError):
        raise  # a file gone since the dataset was built; a reduce_zero_label clash
    except Exception as err:  # pillow: OSError; cv2 decodes None, mmseg then fails on it
        raise InvalidDataError(f'label map {path!r} cannot be read as an image '
                               f'({type(err).__name__}: {err}): {LABEL_MAP}') from err
    labels = results['gt_seg_map']
    height, width = tuple(results.get('ori_shape', labels.shape))[:2]
    if labels.ndim == 2 and labels.shape == (height, width):
        check_label_depth(load, path)
        return results
    problem = (f'has {labels.shape[2]} channels' if labels.ndim == 3 else
               f'is {" x ".join(map(str, labels.shape))} pixels')
    raise InvalidDataError(f'label map {path!r} {problem} (shape {labels.shape}) and its image '
                           f'{results.get("img_path")!r} is {height} x {width} (height x width): '
                           f'{LABEL_MAP}')


def check_label_depth(load, path: str) -> None:
    """Check that a 16-bit PNG label map (on a local disk) holds no value above 255: mmseg's
    ``LoadAnnotations`` (``load``) casts label maps to 8 bits, so such values would wrap
    around to other classes (256 to 0). The file is decoded a second time only if its
    header says 16 bits."""
    path = local_file(path, getattr(load, 'backend_args', None))
    if path is None:
        return
    try:
        image = Image.open(path)  # reads the header only
    except OSError:  # not a format pillow reads (the configured decoder read it)
        return
    with image:
        if image.format != 'PNG' or image.mode not in SIXTEEN_BIT_MODES:
            return
        top = int(np.asarray(image).max()) if image.width and image.height else 0
    if top > 255:
        raise InvalidDataError(f'label map {path!r} is a 16-bit PNG with values up to {top}: mmseg '
                               f'reads label maps as 8 bits, so values above 255 would become '
                               f'other classes ({top} -> {top % 256}); {LABEL_MAP}, 8 bits')


@DATASETS.register_module()
class CheckedADE20KDataset(ADE20KDataset):
    """``ADE20KDataset`` that reports bad data with one clear error.

    When the dataset is built (before training starts) it raises ``FileNotFoundError``
    if it finds no image, if an image has no label map, if a label map has no image (an
    image lost in copying), or, with an ``ann_file`` list, if a listed image is missing;
    the error names the first files, their number and the folders. mmseg's dataset would
    fail only when such a sample is loaded, or silently leave the image out.

    Whenever a sample is loaded it checks the labels that reach the loss or the metric
    (the packed ``gt_sem_seg``): a value that is neither a class index
    (0..num_classes-1, the number of ``classes`` in the metainfo, after
    ``reduce_zero_label``) nor ``ignore_index`` raises ``ValueError`` naming the label
    file, the values and the valid range. Otherwise such values end in an indexing error
    deep inside the loss in training, and are silently dropped by ``IoUMetric`` in
    testing (a wrong mIoU). A value in a part of the image that a random crop leaves out
    is not seen in that iteration (nor trained on); testing always sees the whole map.
    Earlier, as soon as ``LoadAnnotations`` has read a label map (before any resizing; in
    training, testing and test-time augmentation alike), a label map that is not an image,
    has more than one channel (e.g. an RGB rendering) or is not the size of its image
    raises ``ValueError`` naming the label file, its shape and the image's; mmseg would
    fail later with an error that names no file, or resize it to fit in training. So does
    a 16-bit PNG label map with values above 255, which mmseg would wrap to 8 bits. A JPEG
    image cut short (OpenCV decodes it with the missing part gray) raises ``ValueError``
    naming it when it is loaded. The checks that read a file again (the end of a JPEG
    image, the values of a 16-bit label map) check files on a local disk only.

    Args:
        check_files (bool): Check the image and label files when the dataset is built.
            Defaults to True.
        check_labels (bool): Check the label map and its values of every loaded sample.
            Defaults to True.
        **kwargs: Passed to ``ADE20KDataset`` (``data_root``, ``data_prefix``,
            ``pipeline``, ``ignore_index``, ...).
    """

    def __init__(self, *args, check_files: bool = True, check_labels: bool = True,
                 **kwargs):
        self.check_files = check_files
        self.check_labels = check_labels
        super().__init__(*args, **kwargs)
        guard_transforms(self.pipeline, LoadImageFromFile, check_image_complete)
        if check_labels:
            guard_transforms(self.pipeline, LoadAnnotations, check_label_map)

    def load_data_list(self) -> List[dict]:
        """A missing image or label folder is refused (with what the dataset expects);
        then mmseg's listing of images and label maps, then the check of the files."""
        if self.check_files:
            require_paths(type(self).__name__,
                          [('image folder', self.data_prefix.get('img_path')),
                           ('label folder', self.data_prefix.get('seg_map_path')),
                           ('list file', self.ann_file)], LAYOUT, self.backend_args,
                          self.data_root)
        data_list = super().load_data_list()
        if self.check_files:
            self._check_files(data_list)
        return data_list

    def _check_files(self, data_list: List[dict]) -> None:
        img_dir = self.data_prefix.get('img_path') or ''
        ann_dir = self.data_prefix.get('seg_map_path')
        where = f'data_root={self.data_root!r}'
        if not data_list:
            raise MissingDataError(
                f'{type(self).__name__}: no image ending in {self.img_suffix!r} in '
                f'{img_dir!r}' + (f' listed in {self.ann_file!r}' if self.ann_file else '')
                + f' ({where})')
        problems = []
        from_list = bool(self.ann_file) and not osp.isdir(self.ann_file)  # as mmseg
        if from_list:  # the images come from a list, not from the folder
            images = [info['img_path'] for info in data_list]
            missing = find_missing(images, self.backend_args)
            if missing:
                problems.append(
                    f'{len(missing)} of the {len(images)} images listed in '
                    f'{self.ann_file!r} do not exist in {img_dir!r}: '
                    f'{quote_some(relative_names(missing, img_dir))}')
        labels = [info['seg_map_path'] for info in data_list if 'seg_map_path' in info]
        if labels:
            missing = find_missing(labels, self.backend_args)
            if missing:
                problems.append(
                    f'{len(missing)} of the {len(labels)} images have no label map in '
                    f'{ann_dir!r}: {quote_some(relative_names(missing, ann_dir))}')
            if not from_list and fileio.isdir(ann_dir, backend_args=self.backend_args):
                expected = set(relative_names(labels, ann_dir))
                orphans = sorted(
                    name for name in fileio.list_dir_or_file(
                        ann_dir, list_dir=False, suffix=self.seg_map_suffix,
                        recursive=True, backend_args=self.backend_args)
                    if name not in expected)
                if orphans:
                    problems.append(
                        f'{len(orphans)} label maps in {ann_dir!r} have no image '
                        f'(*{self.img_suffix}) in {img_dir!r}: {quote_some(orphans)}')
        if problems:
            raise MissingDataError(f'{type(self).__name__} ({where}): ' +
                                   '; '.join(problems))

    def prepare_data(self, idx: int):
        """The sample through the pipeline, with its labels checked."""
        data = super().prepare_data(idx)
        if self.check_labels and isinstance(data, dict):
            samples = data.get('data_samples')
            if not isinstance(samples, (list, tuple)):  # a list with test-time aug
                samples = [samples]
            for sample in samples:
                if sample is not None and 'gt_sem_seg' in sample:
                    self._check_label_values(sample.gt_sem_seg.data, idx)
        return data

    def _check_label_values(self, labels: torch.Tensor, idx: int) -> None:
        num_classes = len(self.metainfo['classes'])
        bad = bad_label_values(torch.unique(labels).tolist(), num_classes,
                               self.ignore_index)
        if not bad:
            return
        path = self.get_data_info(idx).get('seg_map_path')
        hint = ''
        if self.reduce_zero_label:
            hint = (f'; with reduce_zero_label a value v in the file becomes v-1, so the '
                    f'file may hold 0 (ignored), 1..{num_classes} and 255 (ignored)')
        raise InvalidDataError(
            f'label map {path!r} holds values {bad} (after loading) outside the '
            f'{num_classes} classes of {type(self).__name__}: labels must be '
            f'0..{num_classes - 1} or {self.ignore_index} (ignored){hint}')


@DATASETS.register_module()
class ShapesADE20KDataset(CheckedADE20KDataset):
    """``CheckedADE20KDataset`` (``.jpg`` images, ``.png`` labels,
    ``reduce_zero_label=True``) whose classes are the shapes of :data:`SHAPE_CLASSES`.

    Args:
        **kwargs: Passed to ``CheckedADE20KDataset`` (``data_root``, ``data_prefix``,
            ``pipeline``, ...).
    """
    METAINFO = dict(classes=SHAPE_CLASSES, palette=SHAPE_PALETTE)
