"""AS-MLP in mmdet: registration, pretrained loading, the COCO configs, and the CPU demo."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_tool
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner import set_random_seed

from asmlp_mm.analysis import paper
from asmlp_mm.analysis import build_model_from_config, count_params, save_initial_weights
from asmlp_mm.analysis.detection import detector_flops
from asmlp_mm.datasets import SHAPE_CLASSES, polygon_mask
from asmlp_mm.datasets.shapes import annotation_file, make_coco_dataset
from asmlp_mm.models import ASMLP

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
DEMO = osp.join(CONFIGS, 'demo', 'cascade-mask-rcnn_asmlp-demo_fpn_shapes-coco.py')
CLS_DEMO = osp.join(CONFIGS, 'demo', 'asmlp-demo_1xb8_shapes-cls.py')
TINY_ARCH = dict(embed_dims=8, depths=[1, 1, 1, 1])


def cascade(arch, schedule):
    return osp.join(CONFIGS, 'cascade_mask_rcnn',
                    f'cascade-mask-rcnn_asmlp-{arch}_fpn_ms-crop-{schedule}_coco.py')


def mask_rcnn(arch, schedule):
    return osp.join(CONFIGS, 'mask_rcnn', f'mask-rcnn_asmlp-{arch}_fpn_ms-crop-{schedule}_coco.py')


# the 3x configs build the same model as the 1x ones (test_*_recipe)
DET_CONFIGS = [cascade(a, '1x') for a in ('tiny', 'small', 'base')] + [
    mask_rcnn(a, '1x') for a in ('tiny', 'small')]


def config_id(path):
    return osp.basename(path)[:-3]


# ---------------------------------------------------------------------------------------
# the backbone in mmdet
# ---------------------------------------------------------------------------------------
def test_asmlp_is_an_mmdet_backbone():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    backbone = MODELS.build(dict(type='ASMLP', arch=TINY_ARCH, out_indices=(0, 1, 2, 3)))
    assert isinstance(backbone, ASMLP)
    neck = MODELS.build(dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16,
                             num_outs=5))
    image = torch.randn(1, 3, 333, 517)
    feats = backbone(image)
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]
    for i, f in enumerate(feats):  # strides 4, 8, 16, 32, sizes rounded up
        stride = 4 * 2**i
        assert f.shape[2:] == (-(-333 // stride), -(-517 // stride))
    pyramid = neck(feats)
    assert [p.shape[2:] for p in pyramid][-1] == (-(-333 // 64), -(-517 // 64))


def tiny_classifier_checkpoint(path):
    """An mmpretrain AS-MLP classifier (the classification demo's) saved as training would."""
    torch.manual_seed(1)
    classifier = build_model_from_config(CLS_DEMO)
    for p in classifier.parameters():  # not the fresh init that a detector also starts from
        torch.nn.init.normal_(p, std=0.5)
    torch.save({'state_dict': classifier.state_dict(), 'meta': {}}, path)
    return classifier


def test_pretrained_classifier_loads_into_detector_backbone(tmp_path):
    ckpt = str(tmp_path / 'asmlp-demo_cls.pth')
    classifier = tiny_classifier_checkpoint(ckpt)
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=ckpt,
                                       prefix='backbone.')
    detector = build_model_from_config(cfg)
    detector.init_weights()
    ours = detector.backbone.state_dict()
    theirs = classifier.backbone.state_dict()
    shared = set(ours) & set(theirs)
    # everything but the norms of stages 0-2, which only dense prediction uses
    assert set(ours) - shared == {f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')}
    for key in shared:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)


# ---------------------------------------------------------------------------------------
# the COCO configs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('config', DET_CONFIGS, ids=config_id)
def test_config_builds_with_paper_params_and_trains_one_step(config):
    cfg = Config.fromfile(config)
    model = build_model_from_config(cfg)
    # the paper's count (model zoo metafiles) within 1M
    assert count_params(model) == pytest.approx(paper.find_model(config).params, abs=1e6)
    # a loss step on a tiny image; few proposals keep the full-width RoI heads cheap
    model.train_cfg.rpn_proposal.max_per_img = 16
    loss = one_loss_step(model, size=64)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def one_loss_step(model, size):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmdet.structures.mask import BitmapMasks
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size),
                                         batch_input_shape=(size, size)))
    masks = np.zeros((1, size, size), dtype=np.uint8)
    masks[0, 10:40, 12:44] = 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[12., 10., 44., 40.]]), labels=torch.tensor([0]),
        masks=BitmapMasks(masks, size, size))
    model.train()
    losses = model.loss(torch.randn(1, 3, size, size), [sample])
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return loss.detach()


def head_settings(head):
    """A box head's settings apart from its widths and number of classes."""
    return {k: v for k, v in head.items()
            if k not in ('in_channels', 'conv_out_channels', 'fc_out_channels',
                         'num_classes')}


# the released configs' drop path rates and shift sizes (tests/test_released_configs.py)
CASCADE_BACKBONES = {('tiny', '1x'): (.1, 5), ('tiny', '3x'): (.2, 3),
                     ('small', '1x'): (.1, 5), ('small', '3x'): (.2, 3),
                     ('base', '1x'): (.2, 5), ('base', '3x'): (.3, 5)}


def without_backbone_rates(model):
    """A model config without the backbone's drop path rate and shift size."""
    model = model.to_dict()
    for key in ('drop_path_rate', 'shift_size'):
        model['backbone'].pop(key)
    return model


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
@pytest.mark.parametrize('schedule,epochs,steps', [('1x', 12, [8, 11]), ('3x', 36, [27, 33])])
def test_cascade_recipe(arch, schedule, epochs, steps):
    cfg = Config.fromfile(cascade(arch, schedule))
    assert (cfg.model.backbone.drop_path_rate,
            cfg.model.backbone.shift_size) == CASCADE_BACKBONES[arch, schedule]
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    heads = cfg.model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [
        [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    for head in heads:
        assert (head.type, head.num_shared_convs, head.num_shared_fcs) == (
            'ConvFCBBoxHead', 4, 1)
        assert head.norm_cfg.type == 'SyncBN' and head.reg_decoded_bbox
        assert (head.loss_bbox.type, head.loss_bbox.loss_weight) == ('GIoULoss', 10.0)
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.param_scheduler[-1].milestones == steps
    assert_shared_recipe(cfg)
    assert without_backbone_rates(cfg.model) == without_backbone_rates(
        Config.fromfile(cascade(arch, '1x')).model)


@pytest.mark.parametrize('arch', ['tiny', 'small'])
@pytest.mark.parametrize('schedule,epochs', [('1x', 12), ('3x', 36)])
def test_mask_rcnn_recipe(arch, schedule, epochs):
    cfg = Config.fromfile(mask_rcnn(arch, schedule))
    assert cfg.model.type == 'MaskRCNN'
    assert cfg.model.backbone.drop_path_rate == .2
    # shift size 3 in the released S-3x config, 5 in the others
    assert cfg.model.backbone.shift_size == (3 if (arch, schedule) == ('small', '3x') else 5)
    assert cfg.train_cfg.max_epochs == epochs
    assert_shared_recipe(cfg)
    assert without_backbone_rates(cfg.model) == without_backbone_rates(
        Config.fromfile(mask_rcnn(arch, '1x')).model)


def assert_shared_recipe(cfg):
    assert cfg.model.backbone.type == 'ASMLP'
    assert cfg.model.backbone.out_indices == (0, 1, 2, 3)
    width = ASMLP.arch_zoo[cfg.model.backbone.arch]['embed_dims']
    assert cfg.model.neck.in_channels == [width, 2 * width, 4 * width, 8 * width]
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.)}
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    multi_scale, crop = cfg.train_pipeline[3].transforms
    scales = [(s, 1333) for s in range(480, 801, 32)]
    assert multi_scale[0].scales == scales and crop[2].scales == scales
    assert crop[0].scales == [(400, 1333), (500, 1333), (600, 1333)]
    assert (crop[1].crop_type, crop[1].crop_size) == ('absolute_range', (384, 600))
    assert cfg.test_pipeline[1].scale == (1333, 800)
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'


def test_demo_changes_only_sizes_of_the_real_config():
    demo = Config.fromfile(DEMO)
    real = Config.fromfile(cascade('tiny', '1x'))
    assert list(demo.metainfo.classes) == list(SHAPE_CLASSES)
    assert [head_settings(h) for h in demo.model.roi_head.bbox_head] == [
        head_settings(h) for h in real.model.roi_head.bbox_head]
    assert demo.optim_wrapper.paramwise_cfg == real.optim_wrapper.paramwise_cfg
    assert demo.optim_wrapper.optimizer.type == 'AdamW'
    assert demo.model.type == real.model.type


def test_no_weight_decay_on_the_backbones_norm_layers():
    """As in the authors' released detection configs: no weight decay on the backbone's
    GroupNorms; everything else, the cascade heads' SyncBN included, decays."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(DEMO)
    model = build_model_from_config(cfg)
    with DefaultScope.overwrite_default_scope('mmdet'):
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    checked = set()
    for name, module in model.named_modules():
        in_backbone = name.startswith('backbone.')
        expected = 0. if in_backbone and isinstance(module, torch.nn.GroupNorm) else 0.05
        for p in module.parameters(recurse=False):
            assert decay[id(p)] == expected, name
            checked.add((name.split('.')[0], type(module).__name__, expected))
    assert {('backbone', 'GroupNorm', 0.), ('backbone', 'Conv2d', 0.05),
            ('roi_head', 'SyncBatchNorm', 0.05), ('neck', 'Conv2d', 0.05)} <= checked


def packed_sample(rng, size=64):
    """One image of shapes as the data pipeline packs it (uint8 CHW + DetDataSample)."""
    from mmdet.datasets.transforms import PackDetInputs
    from mmdet.structures.mask import BitmapMasks
    from asmlp_mm.datasets import draw_scene
    image, shapes = draw_scene(rng, size, size, [0, 2])
    masks = np.stack([polygon_mask(poly, size, size) for _, poly in shapes]).astype(np.uint8)
    boxes = np.array([[*poly.min(0), *poly.max(0)] for _, poly in shapes], np.float32)
    results = dict(img=image[..., ::-1].copy(), img_shape=(size, size),
                   ori_shape=(size, size), scale_factor=(1., 1.), img_id=0,
                   img_path='', gt_bboxes=boxes,
                   gt_bboxes_labels=np.array([c for c, _ in shapes], np.int64),
                   gt_ignore_flags=np.zeros(len(shapes), bool),
                   gt_masks=BitmapMasks(masks, size, size))
    return PackDetInputs(meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                    'scale_factor'))(results)


def built_for_training(cfg):
    """The detector of ``cfg`` (seed 0, initialized) and its optimizer wrapper."""
    from mmengine.optim import build_optim_wrapper
    set_random_seed(0)
    model = build_model_from_config(cfg)
    model.init_weights()
    with DefaultScope.overwrite_default_scope('mmdet'):
        return model, build_optim_wrapper(model, cfg.optim_wrapper)


def train_step_on_two_images(model, optim_wrapper):
    """The losses of one training step of ``model`` on two images of shapes."""
    rng = np.random.default_rng(0)
    batch = [packed_sample(rng) for _ in range(2)]
    model.train()
    return model.train_step(
        dict(inputs=[b['inputs'] for b in batch], data_samples=[b['data_samples'] for b in batch]),
        optim_wrapper)


def test_demo_train_step_with_frozen_stages_and_norm_eval():
    """A full train step of the demo detector: stage 0 frozen, backbone BN kept in eval."""
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.update(frozen_stages=1, norm_eval=True,
                              norm_cfg=dict(type='BN', requires_grad=True))
    model, optim_wrapper = built_for_training(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train_step_on_two_images(model, optim_wrapper)
    assert {'loss_rpn_cls', 's0.loss_bbox', 's2.loss_mask'} <= set(losses)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith(('backbone.patch_embed.', 'backbone.stages.0.',
                                                 'backbone.norm0.'))]
    assert frozen and not changed & set(frozen)
    assert 'backbone.stages.1.blocks.0.mlp.fc1.weight' in changed
    backbone_stats = [k for k in before if k.startswith('backbone.') and 'running' in k]
    head_stats = [k for k in before if k.startswith('roi_head.') and 'running' in k]
    assert backbone_stats and not changed & set(backbone_stats)  # norm_eval
    assert head_stats and set(head_stats) <= changed  # the heads' (Sync)BN do train


def test_demo_train_step_with_amp_on_cpu(monkeypatch):
    """--amp on CPU: the backbone and the neck run in bfloat16, the heads (mmcv's CPU nms
    and RoIAlign take float32 only) in float32."""
    from asmlp_mm.runtime import enable_amp
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config.fromfile(DEMO)
    enable_amp(cfg)
    model, optim_wrapper = built_for_training(cfg)
    assert optim_wrapper.modules == ['backbone', 'neck']
    seen = {}
    for name, module in (('backbone', model.backbone.stages[1].blocks[0].mlp.fc1),
                         ('neck', model.neck.fpn_convs[0].conv),
                         ('rpn_head', model.rpn_head.rpn_conv)):
        module.register_forward_hook(
            lambda m, args, out, name=name: seen.setdefault(name, out.dtype) and None)
    before = model.backbone.stages[1].blocks[0].mlp.fc1.weight.detach().clone()
    losses = train_step_on_two_images(model, optim_wrapper)
    assert seen == {'backbone': torch.bfloat16, 'neck': torch.bfloat16,
                    'rpn_head': torch.float32}
    assert all(torch.isfinite(v).all() for v in losses.values())
    weight = model.backbone.stages[1].blocks[0].mlp.fc1.weight
    assert weight.dtype == torch.float32 and not torch.equal(weight, before)


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------
def test_detector_flops_of_roi_heads_match_hand_count():
    cfg = Config.fromfile(DEMO)
    model = build_model_from_config(cfg)
    flops = detector_flops(model, (96, 128), num_proposals=10, num_mask_rois=4)
    c, fc, k = 32, 128, 3
    # per RoI: 4 x (3x3 conv + BN with affine), fc, classifier (k + 1), class-wise boxes
    box = 4 * (c * c * 9 * 49 + 2 * c * 49) + c * 49 * fc + fc * (k + 1) + fc * 4 * k
    # per RoI: 4 x 3x3 conv at 14x14, 2x2 stride-2 deconv, 1x1 logits at 28x28
    mask = 4 * c * c * 9 * 196 + c * c * 4 * 196 + c * k * 784
    assert flops['bbox_heads'] == 3 * 10 * box
    assert flops['mask_heads'] == 3 * 4 * mask
    assert flops['total'] == sum(v for key, v in flops.items() if key != 'total')
    assert flops['backbone'] > 0 and flops['neck'] > 0 and flops['rpn_head'] > 0


def test_detector_flops_rejects_non_detectors():
    with pytest.raises(TypeError, match='two-stage detector'):
        detector_flops(ASMLP(TINY_ARCH), (32, 32))


# ---------------------------------------------------------------------------------------
# the tiny dataset
# ---------------------------------------------------------------------------------------
def test_coco_dataset_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO
    root = make_coco_dataset(str(tmp_path / 'coco'), seed=3, num_train=6, num_val=2, size=64)
    coco = COCO(annotation_file(root, 'train'))
    assert len(coco.getImgIds()) == 6
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    for img in coco.loadImgs(coco.getImgIds()):
        assert osp.isfile(osp.join(root, 'train', img['file_name']))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
        assert anns
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for a, m in zip(anns, masks):
            x, y, w, h = a['bbox']
            ys, xs = np.nonzero(m)
            assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2  # rasterizers differ
            assert abs(xs.max() - (x + w)) <= 2 and abs(ys.max() - (y + h)) <= 2
            assert abs(int(m.sum()) - a['area']) <= 0.15 * a['area']
        total = np.sum(masks, axis=0)
        assert total.max() <= 1  # no two shapes overlap: every polygon is fully visible
    again = make_coco_dataset(str(tmp_path / 'again'), seed=3, num_train=6, num_val=2,
                              size=64)
    with open(annotation_file(again, 'val')) as f, \
            open(annotation_file(root, 'val')) as g:
        assert json.load(f) == json.load(g)


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_train=0), 'positive'), (dict(size=16), 'at least 32'),
    (dict(max_shapes=0), 'max_shapes'), (dict(classes=('hexagon', )), 'subset')])
def test_coco_dataset_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_coco_dataset(str(tmp_path), **kwargs)


# ---------------------------------------------------------------------------------------
# the demo end to end: tools/train.py, tools/test.py and mmdet's packaged train tool
# ---------------------------------------------------------------------------------------
def data_options(root):
    root = root.rstrip('/') + '/'
    return ['--cfg-options'] + [f'{loader}.dataset.data_root={root}' for loader in (
        'train_dataloader', 'val_dataloader', 'test_dataloader')] + [
        f'{evaluator}.ann_file={annotation_file(root, "val")}'
        for evaluator in ('val_evaluator', 'test_evaluator')]


def evaluate(checkpoint, work_dir, name, options, *extra):
    metrics = osp.join(work_dir, f'{name}.json')
    run_tool(osp.join(ROOT, 'tools', 'test.py'), DEMO, checkpoint, '--work-dir', work_dir,
             '--dump-metrics', metrics, *extra, *options, cwd=work_dir, threads=1)
    with open(metrics) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def shapes_coco(tmp_path_factory):
    return make_coco_dataset(str(tmp_path_factory.mktemp('data') / 'shapes_coco'), seed=0)


def test_demo_train_then_test_improves_box_and_mask_ap(shapes_coco, tmp_path):
    work = str(tmp_path / 'work')
    options = data_options(shapes_coco)
    out = run_tool(osp.join(ROOT, 'tools', 'train.py'), DEMO, '--work-dir', work, *options,
                   cwd=str(tmp_path), threads=1)
    assert 'coco/segm_mAP' in out  # validation at the end of training
    with open(osp.join(work, 'last_checkpoint')) as f:
        trained = f.read().strip()
    after = evaluate(trained, work, 'trained', options, '--show-dir', 'predictions')
    init = osp.join(work, 'init.pth')
    save_initial_weights(DEMO, init)
    before = evaluate(init, work, 'init', options)
    for metric in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert after[metric] >= before[metric] + 0.05, (metric, before, after)
    drawn = glob.glob(osp.join(work, '*', 'predictions', '*.jpg'))
    assert len(drawn) == len(os.listdir(osp.join(shapes_coco, 'val')))


def test_demo_runs_with_mmdets_own_train_tool(shapes_coco, tmp_path):
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(tool)
    work = str(tmp_path / 'work')
    options = data_options(shapes_coco) + [
        'train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=2',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get('PYTHONPATH', '')]))
    out = run_tool(tool, DEMO, '--work-dir', work, *options, cwd=str(tmp_path), env=env,
                   threads=1)
    assert 'coco/bbox_mAP' in out
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))


def test_mmdets_own_test_tool_refuses_a_checkpoint_of_another_model(shapes_coco, tmp_path):
    """The fit checks are hooks of the configs (configs/_base_/asmlp_runtime.py), so
    mmdet's packaged tools refuse a checkpoint that does not fit, as ours do; without them
    mmdet loads it non-strictly with warnings and evaluates a partly random model."""
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.patch_embed.proj.weight': torch.zeros(8, 3, 2, 2)}},
               other)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        [sys.executable, tool, DEMO, str(other), '--work-dir', str(tmp_path / 'work'),
         *data_options(shapes_coco)], cwd=str(tmp_path), env=env, capture_output=True,
        text=True)
    assert result.returncode != 0
    assert re.search(r"CheckpointMismatchError: checkpoint '.*other\.pth' does not fit",
                     result.stderr), result.stderr[-3000:]
    assert 'backbone.patch_embed.proj.weight' in result.stderr
    assert 'Epoch(test)' not in result.stdout + result.stderr  # refused before testing
