"""Bad input gets one clear error, or is handled (issue: reliability)."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from asmlp_mm.analysis import build_model_from_config
from asmlp_mm.checkpoint_io import CheckpointError
from asmlp_mm.datasets import make_classification_folder
from asmlp_mm.models import ASMLP

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_DEMO = osp.join(ROOT, 'configs', 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
TINY = dict(embed_dims=8, depths=[1, 1, 1, 1])


def save_classifier(path, arch):
    cfg = Config.fromfile(CLS_DEMO)
    cfg.model.backbone.arch = arch
    cfg.model.head.in_channels = arch['embed_dims'] * 8
    model = build_model_from_config(cfg)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model


def pretrained(path, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=str(path), prefix=prefix)


def test_pretrained_from_classifier_checkpoint(tmp_path):
    classifier = save_classifier(tmp_path / 'cls.pth', TINY)
    model = ASMLP(TINY, out_indices=(0, 1, 2, 3), init_cfg=pretrained(tmp_path / 'cls.pth'))
    model.init_weights()
    for key, value in classifier.backbone.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_pretrained_of_another_arch_names_the_mismatch(tmp_path):
    save_classifier(tmp_path / 'wide.pth', dict(embed_dims=16, depths=[1, 1, 1, 1]))
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'wide.pth'))
    with pytest.raises(ValueError, match=r'(?s)does not fit ASMLP\(embed_dims=8.*shape of'):
        model.init_weights()
    save_classifier(tmp_path / 'deep.pth', dict(embed_dims=8, depths=[1, 1, 3, 1]))
    model = ASMLP(TINY, init_cfg=pretrained(tmp_path / 'deep.pth'))
    with pytest.raises(ValueError, match='not in the model: stages.2.blocks.1'):
        model.init_weights()


def test_pretrained_wrong_prefix_or_not_a_checkpoint(tmp_path):
    save_classifier(tmp_path / 'cls.pth', TINY)
    with pytest.raises(ValueError, match="no keys starting with 'encoder.'"):
        ASMLP(TINY, init_cfg=pretrained(tmp_path / 'cls.pth', 'encoder.')).init_weights()
    (tmp_path / 'junk.pth').write_bytes(b'\x00garbage' * 10)
    with pytest.raises(CheckpointError, match='cannot load'):
        ASMLP(TINY, init_cfg=pretrained(tmp_path / 'junk.pth')).init_weights()


def run_test_tool(config, checkpoint, cwd, *opts):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, str(checkpoint),
           '--work-dir', str(cwd / 'work'), *opts]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def test_test_tool_rejects_bad_checkpoints(tmp_path):
    data = tmp_path / 'data'
    make_classification_folder(str(data), num_train=1, num_val=1, size=32)
    opts = ['--cfg-options', f'test_dataloader.dataset.data_root={data}']
    (tmp_path / 'junk.pth').write_text('hello')
    result = run_test_tool(CLS_DEMO, tmp_path / 'junk.pth', tmp_path, *opts)
    assert result.returncode != 0 and 'cannot load' in result.stderr
    save_classifier(tmp_path / 'wide.pth', dict(embed_dims=24, depths=[1, 1, 1, 1]))
    result = run_test_tool(CLS_DEMO, tmp_path / 'wide.pth', tmp_path, *opts)
    assert result.returncode != 0
    assert 'does not fit the model of this config' in result.stderr
    assert 'shape of backbone.patch_embed.proj.weight' in result.stderr
    result = run_test_tool(CLS_DEMO, tmp_path / 'missing.pth', tmp_path, *opts)
    assert result.returncode != 0 and 'does not exist' in result.stderr


def test_odd_small_gray_and_rgba_images_classify(tmp_path):
    from mmpretrain.registry import DATASETS
    from mmengine.registry import DefaultScope
    root = tmp_path / 'odd'
    (root / 'val' / 'a').mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (13, 29), dtype=np.uint8), 'L').save(
        root / 'val' / 'a' / 'gray.png')
    Image.fromarray(rng.integers(0, 255, (7, 5, 4), dtype=np.uint8), 'RGBA').save(
        root / 'val' / 'a' / 'rgba.png')
    Image.fromarray(rng.integers(0, 255, (333, 51, 3), dtype=np.uint8)).save(
        root / 'val' / 'a' / 'odd.jpg')
    cfg = Config.fromfile(CLS_DEMO)
    model = build_model_from_config(cfg).eval()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(root)))
    assert len(dataset) == 3
    for i in range(3):
        sample = dataset[i]
        assert sample['inputs'].shape[0] == 3
        batch = model.data_preprocessor({'inputs': [sample['inputs']],
                                         'data_samples': [sample['data_samples']]})
        with torch.no_grad():
            pred, = model(**batch, mode='predict')
        assert pred.pred_score.shape == (3, )


def test_missing_dataset_folder_is_reported(tmp_path):
    from mmpretrain.registry import DATASETS
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(CLS_DEMO)
    with DefaultScope.overwrite_default_scope('mmpretrain'), \
            pytest.raises(Exception, match='nowhere'):
        DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(tmp_path / 'nowhere')))


CLS_TINY = osp.join(ROOT, 'configs', 'asmlp', 'asmlp-tiny_8xb128_in1k.py')


def tiny_imagenet(root, lines=None):
    """An ImageNet layout (train/, val/, meta/{train,val}.txt) of 2 + 2 JPEG images of
    24 x 32, or, with ``lines``, list files of those lines (the images they name are
    written); returns ``root``."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        listed = lines or [f'n01/{split}_{i}.JPEG {i * 999}' for i in range(2)]
        for line in listed:
            path = osp.join(root, split, line.rsplit(' ', 1)[0])
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(listed) + '\n')
    return root


def test_imagenet_list_files_are_read_as_by_mmpretrain(tmp_path):
    root = tiny_imagenet(str(tmp_path / 'imagenet'))
    for split in ('train', 'val'):
        dataset = build_dataset(CLS_TINY, f'{split}_dataloader', data_root=root)
        assert type(dataset).__name__ == 'CheckedImageNet'
        assert [(osp.relpath(info['img_path'], root), info['gt_label'])
                for info in dataset.load_data_list()] == [
                    (f'{split}/n01/{split}_0.JPEG', 0), (f'{split}/n01/{split}_1.JPEG', 999)]
        sample = dataset[1]
        assert sample['inputs'].shape == (3, 224, 224)
        assert int(sample['data_samples'].gt_label) == 999


def test_imagenet_with_absolute_paths_needs_no_data_root(tmp_path):
    """A list file and image folder given as absolute paths are not joined with data_root
    (the configs' 'data/imagenet'), which need not exist."""
    root = tiny_imagenet(str(tmp_path / 'imagenet'))
    dataset = build_dataset(CLS_TINY, 'train_dataloader', data_root=str(tmp_path / 'nowhere'),
                            ann_file=osp.join(root, 'meta', 'train.txt'),
                            data_prefix=osp.join(root, 'train'))
    assert len(dataset) == 2


def test_paths_of_a_storage_that_cannot_tell_are_not_checked(tmp_path, monkeypatch):
    """mmengine's HTTP backend has no exists(): the check leaves such paths to the
    dataset (it failed with AttributeError)."""
    from mmengine.fileio import HTTPBackend

    from asmlp_mm.datasets.checks import MissingDataError, require_paths
    assert not hasattr(HTTPBackend, 'exists')
    require_paths('D', [('annotation file', 'http://127.0.0.1:1/a.json')], 'LAYOUT')
    with pytest.raises(MissingDataError, match="D: the list file 'x/y.txt' does not exist"):
        require_paths('D', [('list file', ''), ('list file', 'x/y.txt')], 'LAYOUT')


@pytest.mark.parametrize('case', ['bad line', 'class 1000', 'class -1', 'missing image',
                                  'cut short', 'listed twice, two classes'])
def test_imagenet_bad_list_files_and_images_are_named(tmp_path, case):
    root = str(tmp_path / 'imagenet')
    lines = ['n01/a.JPEG 3', 'n01/b c.JPEG 5', 'n02/d.JPEG 7']
    if case == 'bad line':
        tiny_imagenet(root, lines)
        for split in ('train', 'val'):
            with open(osp.join(root, 'meta', f'{split}.txt'), 'a') as f:
                f.write('n02/e.JPEG\n')
        error, match = ValueError, (r"list file '.*meta/val.txt', line 4: 'n02/e.JPEG' is not "
                                    r"an image path and a class index")
    elif case.startswith('class'):
        tiny_imagenet(root, lines[:2] + [f'n02/d.JPEG {case.split()[1]}'])
        error, match = ValueError, (
            rf"1 of the 3 images of list file '.*meta/val.txt' have a class index outside 0..999 "
            rf"\(the 1000 classes of CheckedImageNet\): '.*/n02/d.JPEG {case.split()[1]}'")
    elif case == 'listed twice, two classes':  # trained on with both, wrong once in top-1
        tiny_imagenet(root, lines + ['n01/a.JPEG 5'])
        error, match = ValueError, (r"list file '.*meta/val.txt' lists 1 image\(s\) more "
                                    r"than once, with different class indices: 'n01/a.JPEG 3/5'")
    elif case == 'missing image':
        tiny_imagenet(root, lines)
        os.remove(osp.join(root, 'val', 'n01', 'b c.JPEG'))
        error, match = FileNotFoundError, (r"1 of the 3 images listed in '.*meta/val.txt' do "
                                           r"not exist in '.*val': 'n01/b c.JPEG'")
    else:
        tiny_imagenet(root, lines)
        cut_short(osp.join(root, 'val', 'n02', 'd.JPEG'), 0.7)
        dataset = build_dataset(CLS_TINY, 'val_dataloader', data_root=root)
        dataset[0], dataset[1]
        with pytest.raises(ValueError, match=r"image '.*n02/d.JPEG' is cut short"):
            dataset[2]
        return
    with pytest.raises(error, match=match):
        build_dataset(CLS_TINY, 'val_dataloader', data_root=root)


def test_imagenet_image_listed_twice_with_one_class_is_a_warning(tmp_path):
    """Oversampling by listing an image twice may be meant: kept, with a warning."""
    root = tiny_imagenet(str(tmp_path / 'imagenet'), ['n01/a.JPEG 3', 'n01/a.JPEG 3'])
    with pytest.warns(UserWarning, match=r"list file .* lists 1 image\(s\) more than once, "
                      r"with the same class index, so they count more than once: "
                      r"'n01/a.JPEG'"):
        dataset = build_dataset(CLS_TINY, 'val_dataloader', data_root=root)
    assert len(dataset) == 2


# ---------------------------------------------------------------------------------------
# detection and segmentation data, through the demo configs' datasets and pipelines
# ---------------------------------------------------------------------------------------
DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_asmlp-demo_shapes-ade.py')


def build_dataset(config, loader, **overrides):
    """The dataset of ``cfg.<loader>`` as the runner builds it: the config's imports
    (which register its dataset type) and default scope."""
    from mmengine.registry import DATASETS, DefaultScope
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(config)
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return DATASETS.build(dict(cfg[loader].dataset, **overrides))


def eval_model(config):
    """The config's model, initialized as training starts, SyncBN as BN (as the runner
    does without a launcher), in eval mode."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.runner import set_random_seed
    set_random_seed(0)
    model = revert_sync_batchnorm(build_model_from_config(config))
    model.init_weights()
    return model.eval()


def edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, 'w') as f:
        json.dump(data, f)
    return data


def test_coco_missing_images_fail_when_the_dataset_is_built(tmp_path):
    from mmengine.runner import Runner
    from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
    root = make_coco_dataset(str(tmp_path / 'coco'), num_train=2, num_val=2, size=32) + '/'
    # the validation json lists six images that are not on disk (and have no annotations)
    edit_json(annotation_file(root, 'val'), lambda coco: coco['images'].extend(
        dict(id=100 + i, file_name=f'lost_{i}.jpg', height=32, width=32) for i in range(6)))
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(DET_DEMO, 'val_dataloader', data_root=root)
    message = str(err.value)
    assert "6 of the 8 images listed in '" + annotation_file(root, 'val') in message
    assert f"do not exist in '{root}val/'" in message and f"data_root='{root}'" in message
    assert ("'lost_0.jpg', 'lost_1.jpg', 'lost_2.jpg', 'lost_3.jpg', 'lost_4.jpg' "
            'and 1 more') in message

    # before training starts: the runner builds the validation set before the first step
    cfg = Config.fromfile(DET_DEMO)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    cfg.val_evaluator.ann_file = annotation_file(root, 'val')
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FileNotFoundError, match="6 of the 8 images"):
        runner.train()
    assert runner.iter == 0 and not list((tmp_path / 'work').rglob('*.pth'))

    # a training image gone from disk
    os.remove(osp.join(root, 'train', 'train_0001.jpg'))
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 images .* 'train_0001.jpg'$"):
        build_dataset(DET_DEMO, 'train_dataloader', data_root=root)


def coco_with_bad_annotations(root):
    """A COCO train split of 4 images: image 1 has its shapes and a box of no width,
    image 2 only boxes of no height or width < 1, image 3 no annotation, image 4 its
    shapes. Returns the number of shapes of image 1 and the json path."""
    from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
    make_coco_dataset(root, seed=1, num_train=4, num_val=3, size=64)
    path = annotation_file(root, 'train')

    def edit(coco):
        keep = [a for a in coco['annotations'] if a['image_id'] in (1, 4)]
        degenerate = [(1, [10., 10., 0., 20.], 0), (2, [5., 5., 20., 0.], 0),
                      (2, [30., 30., 0.5, 12.], 6)]
        for image_id, (x, y, w, h), area in degenerate:
            keep.append(dict(id=1000 + len(keep), image_id=image_id, category_id=1,
                             iscrowd=0, bbox=[x, y, w, h], area=area,
                             segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        coco['annotations'] = keep

    coco = edit_json(path, edit)
    shapes = [a for a in coco['annotations'] if a['image_id'] == 1 and a['area'] > 0]
    return len(shapes), path


def test_coco_boxes_of_no_area_are_skipped_and_empty_images_dropped_in_training(tmp_path):
    from mmengine.dataset import pseudo_collate
    root = str(tmp_path / 'coco') + '/'
    num_shapes, _ = coco_with_bad_annotations(root)
    train = build_dataset(DET_DEMO, 'train_dataloader', data_root=root)
    # image 3 (no annotation) and image 2 (no usable one) are left out of training
    assert [train.get_data_info(i)['img_id'] for i in range(len(train))] == [1, 4]
    boxes = train[0]['data_samples'].gt_instances.bboxes.tensor
    assert len(boxes) == num_shapes  # the box of no width is skipped
    assert bool(((boxes[:, 2:] - boxes[:, :2]) >= 1).all())

    # unfiltered, a training step on the three odd images gives finite losses
    unfiltered = build_dataset(DET_DEMO, 'train_dataloader', data_root=root, filter_cfg=None)
    assert len(unfiltered) == 4
    model = eval_model(DET_DEMO).train()
    batch = [unfiltered[i] for i in range(3)]
    assert [len(s['data_samples'].gt_instances) for s in batch] == [num_shapes, 0, 0]
    data = model.data_preprocessor(pseudo_collate(batch), True)
    loss, log_vars = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss) and all(np.isfinite(float(v)) for v in log_vars.values())
    loss.backward()


def test_coco_empty_images_are_kept_and_evaluated_in_testing(tmp_path):
    from mmdet.datasets.api_wrappers import COCO
    from mmengine.registry import METRICS, DefaultScope
    from asmlp_mm.datasets.shapes import annotation_file
    root = str(tmp_path / 'coco') + '/'
    num_shapes, train_json = coco_with_bad_annotations(root)
    # testing keeps every image; boxes of no area are left out of the ground truth samples
    test = build_dataset(DET_DEMO, 'val_dataloader', data_root=root, data_prefix=dict(
        img='train/'), ann_file=train_json)
    assert [test.get_data_info(i)['img_id'] for i in range(len(test))] == [1, 2, 3, 4]
    assert [len(test[i]['data_samples'].gt_instances) for i in range(3)] == [
        num_shapes, 0, 0]
    # the metric counts predictions on an image without objects (the metric reads its
    # ground truth from the json as it is: the COCO protocol)
    path = annotation_file(root, 'val')
    edit_json(path, lambda coco: coco.update(
        annotations=[a for a in coco['annotations'] if a['image_id'] != 3]))
    test = build_dataset(DET_DEMO, 'val_dataloader', data_root=root)
    assert len(test) == 3 and len(test[2]['data_samples'].gt_instances) == 0
    coco = COCO(path)
    cfg = Config.fromfile(DET_DEMO)
    some_label = coco.load_anns(coco.get_ann_ids())[0]['category_id'] - 1

    def evaluate(false_positive):
        """Metrics of predictions equal to the ground truth (score 0.9), with or without
        one more box (score 1.0) on the empty image 3."""
        with DefaultScope.overwrite_default_scope('mmdet'):
            metric = METRICS.build(dict(cfg.val_evaluator, ann_file=path))
        metric.dataset_meta = test.metainfo
        for i in range(len(test)):
            info = test.get_data_info(i)
            anns = coco.load_anns(coco.get_ann_ids(img_ids=[info['img_id']]))
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
            labels = [a['category_id'] - 1 for a in anns]
            masks = [coco.annToMask(a) for a in anns]
            scores = [0.9] * len(anns)
            if false_positive and info['img_id'] == 3:
                boxes, labels, scores = [[8., 8., 40., 40.]], [some_label], [1.0]
                masks = [np.pad(np.ones((32, 32), np.uint8), ((8, 24), (8, 24)))]
            shape = (info['height'], info['width'])
            metric.process({}, [dict(img_id=info['img_id'], ori_shape=shape, pred_instances=dict(
                bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                scores=torch.tensor(scores), labels=torch.tensor(labels, dtype=torch.long),
                masks=torch.from_numpy(np.array(masks, bool).reshape(-1, *shape))))])
        return metric.evaluate(len(test))

    perfect = evaluate(false_positive=False)
    assert perfect['coco/bbox_mAP'] == perfect['coco/segm_mAP'] == 1.0
    # a confident box on the image without objects counts against the precision
    with_fp = evaluate(false_positive=True)
    assert with_fp['coco/bbox_mAP'] < 1.0 and with_fp['coco/segm_mAP'] < 1.0


def write_odd_images(folder, suffix):
    """Gray, RGBA, palette, 16-bit, tiny and long thin images; returns {stem: (h, w)}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    images = {
        'gray': Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), 'L'),
        'rgba': Image.fromarray(rng.integers(0, 255, (48, 64, 4), dtype=np.uint8), 'RGBA'),
        'tiny': Image.fromarray(rng.integers(0, 255, (13, 20, 3), dtype=np.uint8)),
        'thin': Image.fromarray(rng.integers(0, 255, (333, 51, 3), dtype=np.uint8)),
    }
    if suffix == '.png':
        images['palette'] = images['tiny'].convert('P')
        images['gray16'] = Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16))
    else:  # JPEG has no alpha: the RGBA image goes as PNG under a .jpg name; and CMYK
        images['cmyk'] = images['thin'].resize((40, 30)).convert('CMYK')
    sizes = {}
    for stem, image in images.items():
        image.save(osp.join(folder, stem + suffix), format='PNG' if stem == 'rgba' else None)
        sizes[stem] = (image.height, image.width)
    return sizes


def test_odd_images_through_the_detection_demo(tmp_path):
    from mmengine.dataset import pseudo_collate
    root = tmp_path / 'coco'
    sizes = write_odd_images(str(root / 'val'), '.jpg')
    images, annotations = [], []
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        images.append(dict(id=i + 1, file_name=stem + '.jpg', height=h, width=w))
        x, y, bw, bh = w / 4, h / 4, w / 2, h / 2
        annotations.append(dict(id=i + 1, image_id=i + 1, category_id=2, iscrowd=0,
                                bbox=[x, y, bw, bh], area=bw * bh,
                                segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]))
    (root / 'annotations').mkdir()
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(('square', 'circle',
                                                                'triangle'))]
    with open(root / 'annotations' / 'odd.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    dataset = build_dataset(DET_DEMO, 'val_dataloader', data_root=str(root) + '/',
                            ann_file='annotations/odd.json')
    model = eval_model(DET_DEMO)
    assert len(dataset) == len(sizes)
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        sample = dataset[i]
        assert sample['inputs'].shape[0] == 3, stem
        assert sample['data_samples'].ori_shape == (h, w)
        assert len(sample['data_samples'].gt_instances) == 1
        with torch.no_grad():
            pred, = model.test_step(pseudo_collate([sample]))
        instances = pred.pred_instances
        assert len(instances) > 0 and instances.masks.shape[1:] == (h, w), stem
        boxes = instances.bboxes  # in the original image
        assert bool((boxes >= 0).all() and (boxes[:, 0::2] <= w + 1e-3).all()
                    and (boxes[:, 1::2] <= h + 1e-3).all()), stem


def test_odd_images_through_the_segmentation_demo(tmp_path):
    from mmengine.dataset import pseudo_collate
    root = tmp_path / 'ade'
    sizes = write_odd_images(str(root / 'images' / 'validation'), '.png')
    (root / 'annotations' / 'validation').mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8)).save(
            root / 'annotations' / 'validation' / f'{stem}.png')
    model = eval_model(SEG_DEMO)
    for pipeline in ('test_pipeline', 'tta_pipeline'):
        dataset = build_dataset(SEG_DEMO, 'val_dataloader', data_root=str(root),
                                img_suffix='.png',
                                pipeline=Config.fromfile(SEG_DEMO)[pipeline])
        assert len(dataset) == len(sizes)
        for i in range(len(dataset)):
            sample = dataset[i]
            stem = osp.basename(dataset.get_data_info(i)['img_path'])[:-4]
            h, w = sizes[stem]
            if pipeline == 'tta_pipeline':  # 3 scales x 2 flips, all in colour
                assert [x.shape[0] for x in sample['inputs']] == [3] * 6, stem
                continue
            assert sample['inputs'].shape[0] == 3, stem
            assert sample['data_samples'].gt_sem_seg.shape == (h, w)
            with torch.no_grad():
                pred, = model.test_step(pseudo_collate([sample]))
            assert pred.pred_sem_seg.shape == (h, w), stem
            assert int(pred.pred_sem_seg.data.max()) < 3


@pytest.mark.parametrize('config,what,missing,layout', [
    (DET_DEMO, 'annotation file', 'annotations/instances_train.json', 'COCO 2017 is expected'),
    (SEG_DEMO, 'image folder', 'images/training', 'ADE20K is expected'),
    (CLS_TINY, 'image folder', 'train', "ImageNet is expected in mmpretrain's layout")])
def test_missing_dataset_folders_are_reported_with_the_expected_layout(
        tmp_path, config, what, missing, layout):
    from asmlp_mm.datasets.checks import MissingDataError
    nowhere = str(tmp_path / 'nowhere' / missing).rstrip('/')
    with pytest.raises(MissingDataError, match=re.escape(f'the {what} {nowhere!r} does not '
                                                         f'exist. {layout}')):
        build_dataset(config, 'train_dataloader', data_root=str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('config,what,missing', [
    (DET_DEMO, 'annotation file', 'annotations/instances_train.json'),
    (SEG_DEMO, 'image folder', 'images/training')])
def test_a_data_root_one_folder_too_high_names_the_folder_below(tmp_path, config, what,
                                                                 missing):
    """data_root=data/ade for data/ade/ADEChallengeData2016 said only that the folder does
    not exist, in words that read as if data/ade were right."""
    from asmlp_mm.datasets.shapes import make_ade_dataset
    from asmlp_mm.datasets.checks import MissingDataError
    from asmlp_mm.datasets.shapes import make_coco_dataset
    parent = tmp_path / 'data'
    if config == SEG_DEMO:
        root = make_ade_dataset(str(parent / 'ADEChallengeData2016'), num_train=1, num_val=1)
    else:
        root = make_coco_dataset(str(parent / 'coco'), num_train=1, num_val=1)
    (parent / 'other').mkdir()  # a folder without the dataset is not named
    nowhere = str(parent / missing)
    with pytest.raises(MissingDataError, match=re.escape(
            f'the {what} {nowhere!r} does not exist; it is in {root!r}, one folder down: '
            f'set data_root={root!r}.')):
        build_dataset(config, 'train_dataloader', data_root=str(parent))


def test_ade_images_without_labels_or_labels_without_images_fail_early(tmp_path):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    root = make_ade_dataset(str(tmp_path / 'ade'), num_train=3, num_val=1)
    labels = osp.join(root, 'annotations', 'training')
    os.remove(osp.join(labels, 'ADE_training_00001.png'))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(osp.join(labels, 'ADE_training_00099.png'))
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(SEG_DEMO, 'train_dataloader', data_root=root)
    message = str(err.value)
    assert f"1 of the 3 images have no label map in '{labels}': 'ADE_training_00001.png'" \
        in message
    assert (f"1 label maps in '{labels}' have no image (*.jpg) in "
            f"'{osp.join(root, 'images', 'training')}': 'ADE_training_00099.png'") in message
    assert 'ADE_training_00002' not in message
    # the validation split is complete: no error
    assert len(build_dataset(SEG_DEMO, 'val_dataloader', data_root=root)) == 1
    # no image at all (e.g. a wrong suffix)
    with pytest.raises(FileNotFoundError, match=r"no image ending in '\.png' in '.*validation'"):
        build_dataset(SEG_DEMO, 'val_dataloader', data_root=root, img_suffix='.png')


def test_ade_label_values_outside_the_classes_fail_in_train_test_and_tta(tmp_path):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    root = make_ade_dataset(str(tmp_path / 'ade'), num_train=2, num_val=2)
    cfg = Config.fromfile(SEG_DEMO)
    for split in ('training', 'validation'):
        path = osp.join(root, 'annotations', split, f'ADE_{split}_00000.png')
        label = np.asarray(Image.open(path))
        # 3 classes: the file may hold 0 (ignored), 1..3 and 255 (ignored); a stripe
        # pattern of 0..8 puts every value in any crop
        bad = (np.arange(label.size).reshape(label.shape) % 9).astype(np.uint8)
        Image.fromarray(bad).save(path)
    for loader, pipeline in (('train_dataloader', cfg.train_pipeline),
                             ('val_dataloader', cfg.test_pipeline),
                             ('val_dataloader', cfg.tta_pipeline)):
        dataset = build_dataset(SEG_DEMO, loader, data_root=root, pipeline=pipeline)
        with pytest.raises(ValueError) as err:
            dataset[0]
        split = 'training' if loader == 'train_dataloader' else 'validation'
        message = str(err.value)
        assert f"ADE_{split}_00000.png' holds values [3, 4, 5, 6, 7]" in message
        assert 'labels must be 0..2 or 255 (ignored)' in message
        assert 'the file may hold 0 (ignored), 1..3 and 255 (ignored)' in message
        good = dataset[1]  # the other label map is fine
        samples = good['data_samples']
        for sample in samples if isinstance(samples, list) else [samples]:
            values = set(torch.unique(sample.gt_sem_seg.data).tolist())
            assert values <= {0, 1, 2, 255}


# ---------------------------------------------------------------------------------------
# bad COCO annotation files and ADE20K label maps
# ---------------------------------------------------------------------------------------
def tiny_coco(tmp_path):
    """A COCO dataset of 2 + 2 images of 32 x 32 (category ids 1..3 of the demo's classes,
    annotation ids 1.. in each split); returns its root (ending in '/')."""
    from asmlp_mm.datasets.shapes import make_coco_dataset
    return make_coco_dataset(str(tmp_path / 'coco'), num_train=2, num_val=2, size=32) + '/'


def truncate(path):
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text[:len(text) // 2])


def json_list(path):
    with open(path, 'w') as f:
        json.dump([dict(id=1)], f)


def set_key(key, value, items='annotations', index=0):
    """An edit of a COCO dict: ``coco[items][index][key] = value`` (``...`` deletes it)."""
    def edit(coco):
        if value is ...:
            del coco[items][index][key]
        else:
            coco[items][index][key] = value
    return edit


def edits(*functions):
    def edit(coco):
        for function in functions:
            function(coco)
    return edit


BAD_COCO = {
    # case: (split, how the json is spoilt, what the message says after naming the file)
    'truncated': ('val', truncate, r'is not valid JSON: Unterminated|is not valid JSON: Expect'),
    'not an object': ('val', json_list, r"holds a JSON list: a COCO instances file is an "
                      r"object with the lists 'images', 'annotations' and 'categories'"),
    'no images': ('val', lambda c: c.pop('images'), r"has no 'images' \(its keys: 'info', "),
    'no categories': ('val', lambda c: c.pop('categories'), r"has no 'categories'"),
    'no annotations': ('train', lambda c: c.pop('annotations'),
                       r"has no 'annotations' list: a training set needs annotated objects"),
    'empty annotations': ('train', lambda c: c.update(annotations=[]),
                          r"has an empty 'annotations' list: a training set needs"),
    'other classes': ('val', edits(set_key('name', 'disc', 'categories', 1),
                                   set_key('name', 'tri', 'categories', 2)),
                      r"has no category named 'circle', 'triangle': 2 of the 3 classes of "
                      r"the dataset \(metainfo classes\) are not in it; its categories are "
                      r"'square', 'disc', 'tri'"),
    'classes in another order': ('val', edits(set_key('name', 'circle', 'categories', 0),
                                              set_key('name', 'square', 'categories', 1)),
                                 r"lists the categories of the classes in another order than "
                                 r"the metainfo classes: .* Give the classes in the order of "
                                 r"the file: \('circle', 'square', 'triangle'\)"),
    'repeated category': ('train', lambda c: c['categories'].append(
        dict(id=9, name='circle')), r"more than one category named 'circle'"),
    'annotations of no image': (
        'val', lambda c: [a.update(image_id=str(a['image_id'])) for a in c['annotations']],
        r"annotations \(ids 1, 2, .*\) refer to image ids that no image of the file "
        r"has \(e\.g\. '1' where the images have ids such as 1, 2\): no object would be"),
    # mmdet skipped them and COCO evaluation left them out: AP 1.0 where it is 0.5
    'annotations of no category': (
        'val', edits(set_key('category_id', 22), set_key('category_id', 22, index=1)),
        r"2 of its \d+ annotations \(ids 1, 2\) have a category_id that no category of "
        r"the file has \(22; the categories have ids 1, 2, 3\): their objects would be "
        r"neither trained on nor evaluated"),
    'repeated image id': ('train', set_key('id', 1, 'images', 1),
                          r'gives the same id to more than one image: ids 1; each image '
                          r'needs its own id'),
    'image without size': ('val', set_key('height', ..., 'images', 1),
                           r"images 2 have no 'height'; each of its images needs 'id', "
                           r"'file_name', 'height'"),
    'no bbox, no iscrowd': (
        'train', edits(set_key('bbox', ...), set_key('iscrowd', ..., index=1)),
        r"2 of its 6 annotations are not valid COCO annotations: annotations 1 have no 'bbox'; "
        r"annotations 2 have no 'iscrowd': each annotation needs 'id', 'image_id', "
        r"'category_id', 'bbox' .* and, as the pipeline loads masks, 'segmentation'"),
    'no area, bad bbox': (
        'val', edits(set_key('area', ...), set_key('bbox', [1, 2, 3], index=1)),
        r"annotations 1 have no 'area'; annotations 2 have a 'bbox' that is not \[x, y, w"),
    'no segmentation': ('val', edits(set_key('segmentation', ...),
                                     set_key('segmentation', ..., index=1)),
                        r"2 of its \d+ annotations are not valid COCO annotations: "
                        r"annotations 1, 2 have no 'segmentation'.* polygons of at least 3 "
                        r"points .* or, for crowds, an RLE"),
    'polygon of 2 points': ('train', set_key('segmentation', [[1, 1, 9, 9.5]]),
                            r"annotations 1 have a polygon of fewer than 3 points \(6 numbers\)"),
    'empty segmentation': ('train', set_key('segmentation', []),
                           r"annotations 1 have an empty 'segmentation'"),
    'bad RLE': ('val', edits(set_key('segmentation', dict(counts='abc')),
                             set_key('iscrowd', 1)),
                r"annotations 1 have an RLE 'segmentation' without 'counts'.* or 'size'"),
}


@pytest.mark.parametrize('case', list(BAD_COCO))
def test_coco_bad_annotation_files_fail_when_the_dataset_is_built(tmp_path, case):
    from asmlp_mm.datasets.shapes import annotation_file
    split, spoil, expected = BAD_COCO[case]
    root = tiny_coco(tmp_path)
    path = annotation_file(root, split)
    spoil(path) if spoil in (truncate, json_list) else edit_json(path, spoil)
    with pytest.raises(ValueError, match=f'annotation file {re.escape(repr(path))}') as err:
        build_dataset(DET_DEMO, f'{split}_dataloader', data_root=root)
    assert re.search(expected, str(err.value)), str(err.value)


def test_coco_annotation_checks_follow_the_data_and_the_pipeline(tmp_path):
    from asmlp_mm.datasets.shapes import annotation_file
    root = tiny_coco(tmp_path)
    path = annotation_file(root, 'val')
    # a test set without annotations (e.g. test-dev) only warns: AP cannot be computed
    edit_json(path, lambda coco: coco.pop('annotations'))
    with pytest.warns(UserWarning, match=re.escape(repr(path)) + ' has no .annotations. '
                      'list: testing runs, but COCO evaluation reports -1 for every AP'):
        dataset = build_dataset(DET_DEMO, 'val_dataloader', data_root=root)
    assert len(dataset) == 2 and len(dataset[0]['data_samples'].gt_instances) == 0
    # without segmentations: fine for a pipeline that does not load masks
    path = annotation_file(root, 'train')
    coco = edit_json(path, lambda coco: [a.pop('segmentation') for a in coco['annotations']])
    pipeline = Config.fromfile(DET_DEMO).train_pipeline
    pipeline[1].with_mask = False
    dataset = build_dataset(DET_DEMO, 'train_dataloader', data_root=root, pipeline=pipeline)
    first = [a for a in coco['annotations'] if a['image_id'] == 1]
    assert len(dataset[0]['data_samples'].gt_instances) == len(first)
    with pytest.raises(ValueError, match="have no 'segmentation'"):
        build_dataset(DET_DEMO, 'train_dataloader', data_root=root)


def test_coco_annotations_of_missing_images_are_named_and_ignored(tmp_path):
    from asmlp_mm.datasets.shapes import annotation_file
    root = tiny_coco(tmp_path)
    path = annotation_file(root, 'train')
    edit_json(path, set_key('image_id', 99))
    with open(path) as f:
        coco = json.load(f)
    with pytest.warns(UserWarning, match=r'1 of its \d+ annotations \(ids 1\) refer to image '
                      r'ids that no image of the file has .*: they are ignored'):
        dataset = build_dataset(DET_DEMO, 'train_dataloader', data_root=root)
    kept = sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset)))
    assert kept == len(coco['annotations']) - 1


def rle(mask, compressed):
    """The COCO run-length encoding of a binary mask: compressed (``counts`` a string), or
    uncompressed (``counts`` the list of run lengths, column-major, from a run of 0)."""
    from pycocotools import mask as mask_util
    if compressed:
        encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return dict(counts=encoded['counts'].decode(), size=list(mask.shape))
    flat = mask.flatten(order='F').astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return dict(counts=np.diff(np.concatenate([[0], changes])).tolist(),
                size=list(mask.shape))


def test_coco_crowd_rle_and_images_without_annotations_are_accepted(tmp_path):
    from asmlp_mm.datasets.shapes import annotation_file
    root = tiny_coco(tmp_path)
    masks = [np.zeros((32, 32), bool) for _ in range(2)]
    masks[0][2:9, 3:12] = masks[1][20:30, 1:5] = True

    def add_crowds(coco):
        coco['images'].append(dict(id=7, file_name='train_0000.jpg', height=32, width=32))
        for i, (mask, compressed) in enumerate(zip(masks, (True, False))):
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                   float(np.ptp(ys) + 1)]
            coco['annotations'].append(dict(
                id=100 + i, image_id=1, category_id=1, iscrowd=1, bbox=box,
                area=int(mask.sum()), segmentation=rle(mask, compressed)))

    coco = edit_json(annotation_file(root, 'train'), add_crowds)
    for split, count in (('train', 2), ('val', 3)):  # image 7 has no annotation
        dataset = build_dataset(DET_DEMO, f'{split}_dataloader', data_root=root,
                                data_prefix=dict(img='train/'),
                                ann_file=annotation_file(root, 'train'))
        assert len(dataset) == count
        sample = dataset[0]['data_samples']
        shapes = [a for a in coco['annotations'] if a['image_id'] == 1 and not a['iscrowd']]
        assert len(sample.gt_instances) == len(shapes)
        crowds = sample.ignored_instances  # crowds are kept as ignored instances
        assert len(crowds) == 2 and len(crowds.masks) == 2
        if split == 'val':  # testing does not resize the masks: the crowds as drawn
            np.testing.assert_array_equal(crowds.masks.to_ndarray(), masks)
            assert len(dataset[2]['data_samples'].gt_instances) == 0


def test_coco_image_of_another_size_than_the_json_fails_when_loaded(tmp_path):
    from asmlp_mm.datasets.shapes import annotation_file
    root = tiny_coco(tmp_path)
    for split in ('train', 'val'):
        edit_json(annotation_file(root, split), edits(set_key('width', 40, 'images', 1),
                                                      set_key('height', 36, 'images', 1)))
        dataset = build_dataset(DET_DEMO, f'{split}_dataloader', data_root=root)
        assert len(dataset[0]['data_samples'].gt_instances) > 0  # image 1 is right
        image = osp.join(root, split, f'{split}_0001.jpg')
        with pytest.raises(ValueError, match=re.escape(
                f"image '{image}' is 32 x 32 pixels (height x width) but annotation file "
                f"'{annotation_file(root, split)}' gives it height=36, width=40 (image id 2)")):
            dataset[1]


def test_coco_jpeg_cut_short_fails_when_loaded(tmp_path):
    root = tiny_coco(tmp_path)
    for split in ('train', 'val'):
        image = osp.join(root, split, f'{split}_0001.jpg')
        cut_short(image, 0.8)
        dataset = build_dataset(DET_DEMO, f'{split}_dataloader', data_root=root)
        assert len(dataset[0]['data_samples'].gt_instances) > 0  # image 1 is whole
        with pytest.raises(ValueError, match=re.escape(
                f"image '{image}' is cut short: its JPEG data ends before the end-of-image "
                f"marker")):
            dataset[1]


def test_ade_jpeg_cut_short_fails_when_loaded_in_train_test_and_tta(tmp_path):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    root = make_ade_dataset(str(tmp_path / 'ade'), num_train=2, num_val=2, size=(64, 80))
    cfg = Config.fromfile(SEG_DEMO)
    for split in ('training', 'validation'):
        cut_short(osp.join(root, 'images', split, f'ADE_{split}_00001.jpg'), 0.6)
    for loader, pipeline in (('train_dataloader', cfg.train_pipeline),
                             ('val_dataloader', cfg.test_pipeline),
                             ('val_dataloader', cfg.tta_pipeline)):
        dataset = build_dataset(SEG_DEMO, loader, data_root=root, pipeline=pipeline)
        split = 'training' if loader == 'train_dataloader' else 'validation'
        dataset[0]
        image = osp.join(root, 'images', split, f'ADE_{split}_00001.jpg')
        with pytest.raises(ValueError, match=re.escape(f"image '{image}' is cut short")):
            dataset[1]


def test_ade_16_bit_label_maps_load_unless_values_would_wrap(tmp_path):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    root = make_ade_dataset(str(tmp_path / 'ade'), num_train=2, num_val=2, size=(64, 80))
    folder = osp.join(root, 'annotations', 'validation')
    for i in (0, 1):
        path = osp.join(folder, f'ADE_validation_{i:05d}.png')
        label = np.asarray(Image.open(path)).astype(np.uint16)
        if i == 1:
            label[:4, :4] = 257  # would become 1, a class, if cast to 8 bits
        Image.fromarray(label).save(path)
    dataset = build_dataset(SEG_DEMO, 'val_dataloader', data_root=root)
    # values within 8 bits: read as the 8-bit file would be
    reference = np.asarray(Image.open(osp.join(folder, 'ADE_validation_00000.png'))) - 1
    loaded = dataset[0]['data_samples'].gt_sem_seg.data[0].numpy()
    np.testing.assert_array_equal(loaded, reference.astype(np.uint8))
    path = osp.join(folder, 'ADE_validation_00001.png')
    with pytest.raises(ValueError, match=re.escape(
            f"label map '{path}' is a 16-bit PNG with values up to 257: mmseg reads label "
            f"maps as 8 bits, so values above 255 would become other classes (257 -> 1)")):
        dataset[1]


def cut_short(path, fraction):
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * fraction)])


def jpeg_bytes(image, **save_args):
    from io import BytesIO
    out = BytesIO()
    image.save(out, 'JPEG', **save_args)
    return out.getvalue()


def test_a_jpeg_cut_short_is_told_past_thumbnails_restarts_and_scans(tmp_path):
    from asmlp_mm.datasets.checks import jpeg_cut_short
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    plain = jpeg_bytes(image)
    thumbnail = jpeg_bytes(image.resize((8, 8)))
    # an APP1 segment holding a whole JPEG (as an EXIF thumbnail), end marker included
    app1 = b'\xff\xe1' + (len(thumbnail) + 2).to_bytes(2, 'big') + thumbnail
    streams = {
        'plain': plain,
        'progressive': jpeg_bytes(image, progressive=True),
        'restart markers': jpeg_bytes(image, restart_marker_blocks=1),
        'thumbnail': plain[:2] + app1 + plain[2:],
    }
    assert b'\xff\xd0' in streams['restart markers'][600:]
    assert streams['progressive'].count(b'\xff\xda') > 1  # several scans
    path = str(tmp_path / 'image.jpg')

    def cut_short(data, **kwargs):
        with open(path, 'wb') as f:
            f.write(data)
        return jpeg_cut_short(path, **kwargs)

    for name, data in streams.items():
        for tail in (b'', b'\0' * 3000, b'appended \xff\xd8 data', b'x' * 5000):
            assert not cut_short(data + tail), (name, tail[:10])
            assert not cut_short(data + tail, tail_bytes=0), (name, tail[:10])
        # every file cut short; one cut right after the thumbnail's end marker passes the
        # look at the file's end, and is told when decoded (tail_bytes=0)
        for size in range(2, len(data)):
            assert cut_short(data[:size], tail_bytes=0), (name, size)
            if not data[:size].endswith(b'\xff\xd9'):
                assert cut_short(data[:size]), (name, size)
    image.save(path, 'PNG')
    assert not jpeg_cut_short(path)  # not a JPEG file


@pytest.mark.parametrize('case', ['smaller', 'rgb', 'not an image'])
def test_ade_label_maps_of_another_size_or_not_single_channel_fail_when_loaded(tmp_path, case):
    from asmlp_mm.datasets.shapes import make_ade_dataset
    root = make_ade_dataset(str(tmp_path / 'ade'), num_train=2, num_val=2, size=(64, 80))
    cfg = Config.fromfile(SEG_DEMO)
    labels = {split: osp.join(root, 'annotations', split, f'ADE_{split}_00001.png')
              for split in ('training', 'validation')}
    for path in labels.values():
        label = np.asarray(Image.open(path))
        if case == 'smaller':
            Image.fromarray(label[::2, ::2]).save(path)
        elif case == 'rgb':
            Image.fromarray(np.stack([label] * 3, -1)).save(path)
        else:
            with open(path, 'w') as f:
                f.write('not a PNG')
    expected = {'smaller': r' is 32 x 40 pixels \(shape \(32, 40\)\) and its image',
                'rgb': r' has 3 channels \(shape \(64, 80, 3\)\) and its image',
                'not an image': r' cannot be read as an image \(UnidentifiedImageError'}[case]
    for loader, pipeline in (('train_dataloader', cfg.train_pipeline),
                             ('val_dataloader', cfg.test_pipeline),
                             ('val_dataloader', cfg.tta_pipeline)):
        dataset = build_dataset(SEG_DEMO, loader, data_root=root, pipeline=pipeline)
        split = 'training' if loader == 'train_dataloader' else 'validation'
        dataset[0]  # the other label map is fine
        with pytest.raises(ValueError) as err:
            dataset[1]
        message = str(err.value)
        assert message.startswith(f'label map {labels[split]!r}')
        assert re.search(expected, message), message
        if case != 'not an image':
            image = osp.join(root, 'images', split, f'ADE_{split}_00001.jpg')
            assert f"its image '{image}' is 64 x 80 (height x width)" in message
        assert 'a label map is a single-channel image' in message
