"""mmdet's ``CocoDataset`` with the checks of bad data that it lacks.

Importing this module registers :class:`CheckedCocoDataset` in mmdet's DATASETS; the
detection configs import it (``custom_imports``) and use it as their dataset type.
"""
import warnings
from collections import Counter, defaultdict
from functools import partial
from numbers import Real
from typing import List, Optional, Sequence

from mmcv.transforms import LoadImageFromFile
from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.datasets.transforms import LoadAnnotations
from mmdet.registry import DATASETS

from .checks import (InvalidDataError, MissingDataError, check_image_complete, find_missing,
                     find_transforms, guard_transforms, quote_some, read_json, relative_names,
                     require_paths)

IMAGE_KEYS = ('id', 'file_name', 'height', 'width')
LAYOUT = ('COCO 2017 is expected in the OpenMMLab layout under data_root: '
          'annotations/instances_{train,val}2017.json, train2017/ and val2017/ '
          '(docs/detection.md); or point the config at your copy with --cfg-options on '
          'the dataloaders\' dataset.data_root and the evaluators\' ann_file.')
# what CocoDataset (bbox, area) and COCO evaluation (also iscrowd) read of every annotation
ANNOTATION_KEYS = ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')
FORMAT = ("a COCO instances file is an object with the lists 'images', 'annotations' "
          "and 'categories'")
ANNOTATION_FORMAT = ("each annotation needs 'id', 'image_id', 'category_id', 'bbox' ([x, y, "
                     "width, height]), 'area' (a number: CocoDataset and COCO evaluation "
                     "read it) and 'iscrowd' (0 or 1)")
MASK_FORMAT = (", and, as the pipeline loads masks, 'segmentation': polygons of at least 3 "
               "points ([[x1, y1, x2, y2, x3, y3, ...], ...]) or, for crowds, an RLE "
               "({'counts': ..., 'size': [height, width] of the image})")


class LoadedCOCO(COCO):
    """mmdet's ``COCO`` API over an annotation dict already read (and checked), instead
    of a file that it reads itself."""

    def __init__(self, dataset: dict):
        super().__init__()
        self.dataset = dataset
        self.createIndex()
        self.img_ann_map = self.imgToAnns  # mmdet's names, bound to the new index
        self.cat_img_map = self.catToImgs


def check_top_level(coco, name: str, test_mode: bool) -> None:
    """The file is an object with the lists ``images`` and ``categories``, and with
    annotations (in testing a warning: an unlabelled set such as test-dev)."""
    if not isinstance(coco, dict):
        raise InvalidDataError(f'annotation file {name!r} holds a JSON {type(coco).__name__}: '
                               f'{FORMAT}')
    for key in ('images', 'categories', 'annotations'):
        if key in coco and not isinstance(coco[key], list):
            raise InvalidDataError(f'annotation file {name!r}: {key!r} is a JSON '
                                   f'{type(coco[key]).__name__}, not a list: {FORMAT}')
    missing = [key for key in ('images', 'categories') if key not in coco]
    if missing:
        absent = ' and no '.join(map(repr, missing))
        raise InvalidDataError(f'annotation file {name!r} has no {absent} '
                               f'(its keys: {quote_some(coco, 10)}): {FORMAT}')
    if not coco.get('annotations'):
        what = 'an empty' if 'annotations' in coco else 'no'
        if not test_mode:
            raise InvalidDataError(f'annotation file {name!r} has {what} \'annotations\' list: a '
                                   f'training set needs annotated objects ({FORMAT})')
        warnings.warn(f'annotation file {name!r} has {what} \'annotations\' list: testing '
                      f'runs, but COCO evaluation reports -1 for every AP; this is expected '
                      f'only of an unlabelled set (e.g. test-dev with format_only=True)')


def check_entries(entries: list, keys: Sequence[str], what: str, name: str) -> None:
    """Every entry of ``entries`` (the ``what`` of the file) is an object with ``keys``."""
    bad = defaultdict(list)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            bad['are not JSON objects'].append(f'at index {index}')
            continue
        absent = [key for key in keys if key not in entry]
        if absent:
            bad[f'have no {" and no ".join(map(repr, absent))}'].append(
                entry.get('id', f'at index {index}'))
    if bad:
        raise InvalidDataError(f'annotation file {name!r}: ' + '; '.join(
            f'{what} {quote_some(ids)} {problem}' for problem, ids in bad.items())
            + f'; each of its {what} needs {quote_some(keys)}')


def check_image_ids(images: List[dict], name: str) -> None:
    """No two images share an id (annotations refer to their image by id)."""
    counts = Counter(image['id'] for image in images)
    repeated = [image_id for image_id, count in counts.items() if count > 1]
    if repeated:
        raise InvalidDataError(
            f'annotation file {name!r} gives the same id to more than one image: ids '
            f'{quote_some(repeated)}; each image needs its own id (annotations refer to '
            f'their image by id: one of the images would be lost and its objects given to '
            f'the other)')


def check_categories(categories: List[dict], classes: Sequence[str], name: str) -> None:
    """Each class of the dataset is the name of exactly one category of the file, and
    the file lists them in the order of the classes (``CocoDataset`` selects the
    categories by name and numbers them in the order of the file)."""
    counts = Counter(category['name'] for category in categories)
    absent = [c for c in classes if c not in counts]
    repeated = [c for c in classes if counts.get(c, 0) > 1]
    if absent:
        raise InvalidDataError(
            f'annotation file {name!r} has no category named {quote_some(absent, 10)}: '
            f'{len(absent)} of the {len(classes)} classes of the dataset (metainfo '
            f'classes) are not in it; its categories are {quote_some(counts, 10)}. Set '
            f'metainfo=dict(classes=(...)) to names of categories of the file')
    if repeated:
        raise InvalidDataError(f'annotation file {name!r} has more than one category named '
                               f'{quote_some(repeated)}: each class needs exactly one category')
    in_file_order = [category['name'] for category in categories
                     if category['name'] in set(classes)]
    if in_file_order != list(classes):
        raise InvalidDataError(
            f'annotation file {name!r} lists the categories of the classes in another order '
            f'than the metainfo classes: mmdet numbers the classes in the order of the '
            f'file, so predictions would carry the wrong names. Give the classes in the '
            f'order of the file: {tuple(in_file_order)}')


def is_number(value) -> bool:
    """A JSON number (``bool`` is not one)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def polygon_problem(polygons: list) -> Optional[str]:
    """What is wrong with a polygon segmentation (a list of ``[x1, y1, x2, y2, ...]``)."""
    if not polygons:
        return "have an empty 'segmentation' (no polygon)"
    for polygon in polygons:
        if not isinstance(polygon, list) or (polygon and not is_number(polygon[0])):
            return "have a 'segmentation' that is not a list of polygons [[x1, y1, ...], ...]"
        if len(polygon) < 6:
            return "have a polygon of fewer than 3 points (6 numbers) in 'segmentation'"
        if len(polygon) % 2:
            return "have a polygon of an odd number of coordinates in 'segmentation'"
    return None


def rle_problem(rle: dict, image: Optional[dict]) -> Optional[str]:
    """What is wrong with a run-length encoded segmentation: ``counts`` (a string, or a
    list when uncompressed) and ``size`` ([height, width] of its image)."""
    counts, size = rle.get('counts'), rle.get('size')
    if not isinstance(counts, (str, list)) or not isinstance(size, list):
        return ("have an RLE 'segmentation' without 'counts' (a string or a list) or 'size' "
                '([height, width])')
    if image is not None and size != [image['height'], image['width']]:
        return "have an RLE 'segmentation' whose 'size' is not [height, width] of its image"
    return None


def annotation_problem(ann: dict, image: Optional[dict], with_masks: bool) -> Optional[str]:
    """What is wrong with one annotation (of the image ``image``), or None."""
    absent = [key for key in ANNOTATION_KEYS if key not in ann]
    if with_masks and 'segmentation' not in ann:
        absent.append('segmentation')
    if absent:
        return f'have no {" and no ".join(map(repr, absent))}'
    bbox = ann['bbox']
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
        return "have a 'bbox' that is not [x, y, width, height]"
    if not is_number(ann['area']):
        return "have an 'area' that is not a number"
    if ann['iscrowd'] not in (0, 1):
        return "have an 'iscrowd' that is not 0 or 1"
    if not with_masks:
        return None
    segmentation = ann['segmentation']
    if isinstance(segmentation, list):
        return polygon_problem(segmentation)
    if isinstance(segmentation, dict):
        return rle_problem(segmentation, image)
    return "have a 'segmentation' that is neither polygons (a list) nor an RLE (an object)"


def check_annotations(coco: dict, name: str, with_masks: bool) -> None:
    """Every annotation has what ``CocoDataset``, the mask loading (``with_masks``) and
    COCO evaluation read, in the form they read it."""
    images = {image['id']: image for image in coco['images']}
    bad = defaultdict(list)
    annotations = coco.get('annotations', [])
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            bad['are not JSON objects'].append(f'at index {index}')
            continue
        problem = annotation_problem(ann, images.get(ann.get('image_id')), with_masks)
        if problem:
            bad[problem].append(ann.get('id', f'at index {index}'))
    if bad:
        raise InvalidDataError(
            f'annotation file {name!r}: {sum(map(len, bad.values()))} of its '
            f'{len(annotations)} annotations are not valid COCO annotations: ' + '; '.join(
                f'annotations {quote_some(ids)} {problem}' for problem, ids in bad.items())
            + f': {ANNOTATION_FORMAT}' + (MASK_FORMAT if with_masks else ''))
    check_image_references(annotations, images, name)
    check_category_references(annotations, coco['categories'], name)


def check_category_references(annotations: List[dict], categories: List[dict],
                              name: str) -> None:
    """Every annotation's ``category_id`` is the id of a category of the file: mmdet skips
    the others as it loads them, and COCO evaluation leaves them out of the ground truth,
    so their objects would be neither trained on nor evaluated (a higher AP), silently."""
    ids = {category['id'] for category in categories}
    unknown = [ann for ann in annotations if ann['category_id'] not in ids]
    if unknown:
        raise InvalidDataError(
            f'annotation file {name!r}: {len(unknown)} of its {len(annotations)} annotations '
            f'(ids {quote_some([ann.get("id") for ann in unknown])}) have a category_id '
            f'that no category of the file has '
            f'({quote_some(sorted({ann["category_id"] for ann in unknown}, key=str))}; the '
            f'categories have ids {quote_some(sorted(ids, key=str))}): their objects would '
            f'be neither trained on nor evaluated')


def check_image_references(annotations: List[dict], images: dict, name: str) -> None:
    """Annotations refer to images of the file: where none does (ids of another kind or
    another file) an error, where some do not a warning (mmdet and COCO evaluation drop
    them)."""
    orphans = [ann.get('id') for ann in annotations if ann['image_id'] not in images]
    if not orphans:
        return
    message = (f'annotation file {name!r}: {len(orphans)} of its {len(annotations)} '
               f'annotations (ids {quote_some(orphans)}) refer to image ids that no image '
               f'of the file has (e.g. {annotations[0]["image_id"]!r} where the images have '
               f'ids such as {quote_some(list(images)[:3])})')
    if len(orphans) == len(annotations):
        raise InvalidDataError(message + ': no object would be trained on or evaluated')
    warnings.warn(message + ': they are ignored')


def check_image_size(load, results: dict, ann_file: str) -> Optional[dict]:
    """Load the image (``load``: the pipeline's ``LoadImageFromFile``; a JPEG cut short is
    an error, see :func:`check_image_complete`) and check that its size is the height and
    width that the annotation file gives it."""
    results = check_image_complete(load, results)
    if results is None or 'height' not in results:
        return results
    real = tuple(results['ori_shape'][:2])
    listed = (results['height'], results['width'])
    if real != listed:
        hint = ' (swapped: an EXIF orientation?)' if real == listed[::-1] else ''
        raise InvalidDataError(
            f'image {results["img_path"]!r} is {real[0]} x {real[1]} pixels (height x width)'
            f' but annotation file {ann_file!r} gives it height={listed[0]}, '
            f'width={listed[1]} (image id {results.get("img_id")}){hint}: its masks would '
            f'be drawn, and evaluated, at the wrong size; correct the sizes in the file')
    return results


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that fails early and clearly on missing images and bad annotations.

    mmdet's ``CocoDataset`` reads an image only when its sample is loaded, so an image
    that the annotation file lists but that is not on disk stops training whenever that
    sample comes up (hours in, or only at validation). This dataset checks, when it is
    built (before training starts), that every image it will read exists, and raises one
    ``FileNotFoundError`` naming the first missing files, their number, the annotation
    file and the folder it looked in.

    When it is built it also checks the annotation file, and raises ``ValueError`` naming
    it and what is wrong (the first ids of the entries at fault) if it is not JSON; if
    it lacks ``images`` or ``categories``; if an image lacks ``id``, ``file_name``,
    ``height`` or ``width``, or two images share an id; if a class of the metainfo is not
    the name of exactly one category; if an annotation lacks ``id``, ``image_id``,
    ``category_id`` (the id of a category of the file), ``bbox`` ([x, y, w, h]), ``area``
    (``CocoDataset`` and COCO evaluation read it) or ``iscrowd`` (0 or 1); or, when the
    pipeline loads masks (``LoadAnnotations(with_mask=True)``), ``segmentation``: polygons
    of at least 3 points each, or an RLE (crowds: ``counts`` compressed or not, ``size``
    that of the image). Without annotations (no or an empty list) training is an error;
    testing warns (COCO
    evaluation gives -1; fine for test-dev with ``format_only``). mmdet would fail later
    (a ``KeyError`` or an ``IndexError`` in the metric, often after inference) or go on
    silently (an image lost to a duplicated id). These checks take about 3 s for a file
    of the size of COCO train2017. When an image is loaded, its size must be the height
    and width that the file gives it (``ValueError`` naming the image, both sizes and the
    file, before any resizing): masks are drawn, and evaluated, at the size of the file.
    A JPEG image cut short (on a local disk) is an error naming it when it is loaded:
    OpenCV would decode it with the missing part gray.

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
        guard_transforms(self.pipeline, LoadImageFromFile,
                         partial(check_image_size, ann_file=self.ann_file))

    def load_data_list(self) -> List[dict]:
        """Refuse a missing annotation file or image folder (with what the dataset
        expects), then ``CocoDataset``'s listing, which reads the file through
        :meth:`COCOAPI`."""
        if self.check_files:
            require_paths(type(self).__name__,
                          [('annotation file', self.ann_file),
                           ('image folder', self.data_prefix.get('img'))],
                          LAYOUT, self.backend_args, self.data_root)
        return super().load_data_list()

    def COCOAPI(self, local_path: str) -> COCO:  # noqa: N802 (the name CocoDataset calls)
        """The annotation file (``local_path``: ``ann_file``, or a local copy of it) read
        and checked, as mmdet's ``COCO`` API; ``CocoDataset.load_data_list`` calls this."""
        coco = read_json(local_path, self.ann_file)
        self._check_annotation_file(coco)
        return LoadedCOCO(coco)

    def _check_annotation_file(self, coco) -> None:
        name = self.ann_file
        check_top_level(coco, name, self.test_mode)
        check_entries(coco['images'], IMAGE_KEYS, 'images', name)
        check_image_ids(coco['images'], name)
        check_entries(coco['categories'], ('id', 'name'), 'categories', name)
        check_categories(coco['categories'], self.metainfo['classes'], name)
        check_annotations(coco, name, self._loads_masks())

    def _loads_masks(self) -> bool:
        """Whether the pipeline loads instance masks (``LoadAnnotations(with_mask=True)``)."""
        return any(t.with_mask for t in find_transforms(self.pipeline, LoadAnnotations))

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
            raise MissingDataError(
                f'{len(missing)} of the {len(paths)} images listed in {self.ann_file!r} '
                f'do not exist in {folder!r} (data_root={self.data_root!r} + '
                f'data_prefix img): {quote_some(relative_names(missing, folder))}')
