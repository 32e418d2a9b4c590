"""The configs against the authors' released configs, value by value.

The released values are restated here, from the files that docs/released_configs.md names
(svip-lab/AS-MLP, svip-lab/AS-MLP-Object-Detection, svip-lab/AS-MLP-Semantic-Segmentation),
under today's names (mmdet 3, mmseg 1.x, mmpretrain keys). Each config must hold them, or
differ as a row of the table in docs/released_configs.md says; each row of that table is
checked against the configs.
"""
import ast
import copy
import fnmatch
import glob
import inspect
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
DOC = osp.join(ROOT, 'docs', 'released_configs.md')


class Exact(dict):
    """A released dict that the config must hold as a whole, no key more or less (the
    others are compared key by key, so that keys the release does not set stay free)."""

# ---------------------------------------------------------------------------------------
# COCO: svip-lab/AS-MLP-Object-Detection (mmdet 2.x)
# ---------------------------------------------------------------------------------------
MS_SCALES = [[short, 1333] for short in range(480, 801, 32)]
# every configs/asmlp/*_coco.py, and its bases: _base_/datasets/coco_instance.py,
# _base_/schedules/schedule_1x.py, _base_/default_runtime.py
COCO_RECIPE = {
    'model.data_preprocessor.mean': [123.675, 116.28, 103.53],
    'model.data_preprocessor.std': [58.395, 57.12, 57.375],
    'model.data_preprocessor.bgr_to_rgb': True,
    'model.data_preprocessor.pad_size_divisor': 32,
    'train_dataloader.batch_size': 2,  # samples_per_gpu, on 8 GPUs
    'train_dataloader.num_workers': 2,
    'auto_scale_lr.base_batch_size': 16,
    'train_dataloader.dataset.filter_cfg.filter_empty_gt': True,
    'train_dataloader.dataset.pipeline': [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='RandomChoice', transforms=[
            [dict(type='RandomChoiceResize', scales=MS_SCALES, keep_ratio=True)],
            [dict(type='RandomChoiceResize', scales=[[400, 1333], [500, 1333], [600, 1333]],
                  keep_ratio=True),
             dict(type='RandomCrop', crop_type='absolute_range', crop_size=[384, 600],
                  allow_negative_crop=True),
             dict(type='RandomChoiceResize', scales=MS_SCALES, keep_ratio=True)],
        ]),
        dict(type='PackDetInputs'),
    ],
    'test_dataloader.dataset.pipeline.1': dict(type='Resize', scale=[1333, 800],
                                               keep_ratio=True),
    'val_evaluator.metric': ['bbox', 'segm'],
    'train_cfg.val_interval': 1,
    'default_hooks.checkpoint.interval': 1,
    'default_hooks.logger.interval': 50,
    'optim_wrapper.type': 'apex O1',
    'optim_wrapper.optimizer': dict(type='AdamW', lr=1e-4, betas=[0.9, 0.999],
                                    weight_decay=0.05),
    'optim_wrapper.paramwise_cfg.custom_keys': Exact(
        absolute_pos_embed=dict(decay_mult=0.),
        relative_position_bias_table=dict(decay_mult=0.),
        norm=dict(decay_mult=0.)),
    'optim_wrapper.clip_grad': None,
    'param_scheduler.0': dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
                              end=500),
    'param_scheduler.1.type': 'MultiStepLR',
    'param_scheduler.1.gamma': 0.1,
    'param_scheduler.1.by_epoch': True,
    'model.backbone.patch_size': 4,
    'model.backbone.mlp_ratio': 4.,
    'model.backbone.drop_rate': 0.,
    'model.backbone.out_indices': [0, 1, 2, 3],
    'model.backbone.frozen_stages': -1,
    'model.backbone.with_cp': False,
    'model.neck': dict(type='FPN', out_channels=256, num_outs=5),
}

RPN_HEAD = dict(
    type='RPNHead', in_channels=256, feat_channels=256,
    anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                          strides=[4, 8, 16, 32, 64]),
    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4, target_stds=[1.] * 4),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))
RPN_ASSIGNER = dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                    match_low_quality=True, ignore_iof_thr=-1)
RPN_SAMPLER = dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                   add_gt_as_proposals=False)
ROI_EXTRACTORS = dict(
    bbox_roi_extractor=dict(type='SingleRoIExtractor', out_channels=256,
                            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                            featmap_strides=[4, 8, 16, 32]),
    mask_roi_extractor=dict(type='SingleRoIExtractor', out_channels=256,
                            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
                            featmap_strides=[4, 8, 16, 32]),
    mask_head=dict(type='FCNMaskHead', num_convs=4, in_channels=256, conv_out_channels=256,
                   num_classes=80,
                   loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)))
RCNN_TEST = dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                 mask_thr_binary=0.5)

# _base_/models/mask_rcnn_asmlp_fpn.py
MASK_RCNN_MODEL = {'model': dict(
    type='MaskRCNN',
    rpn_head=dict(RPN_HEAD, loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        ROI_EXTRACTORS, type='StandardRoIHead',
        bbox_head=dict(
            type='Shared2FCBBoxHead', in_channels=256, fc_out_channels=1024, roi_feat_size=7,
            num_classes=80, reg_class_agnostic=False,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(assigner=RPN_ASSIGNER, sampler=RPN_SAMPLER, allowed_border=-1, pos_weight=-1,
                 debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000,
                          nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                          min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                         add_gt_as_proposals=True),
            mask_size=28, pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=0),
        rcnn=RCNN_TEST))}


def cascade_stage(target_stds, iou):
    """One stage of the released "4conv1fc" GIoU cascade (box head and its train cfg)."""
    head = dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256,
        conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.] * 4,
                        target_stds=target_stds),
        reg_class_agnostic=False, reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
    train = dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                     add_gt_as_proposals=True),
        mask_size=28, pos_weight=-1, debug=False)
    return head, train


# the box heads of configs/asmlp/cascade_*_coco.py; the rest from the release's
# _base_/models/cascade_mask_rcnn_swin_fpn.py (their own base file is not in the release)
STAGES = [cascade_stage([0.1, 0.1, 0.2, 0.2], 0.5),
          cascade_stage([0.05, 0.05, 0.1, 0.1], 0.6),
          cascade_stage([0.033, 0.033, 0.067, 0.067], 0.7)]
CASCADE_MODEL = {'model': dict(
    type='CascadeRCNN',
    rpn_head=dict(RPN_HEAD, loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0,
                                           loss_weight=1.0)),
    roi_head=dict(ROI_EXTRACTORS, type='CascadeRoIHead', num_stages=3,
                  stage_loss_weights=[1, 0.5, 0.25], bbox_head=[h for h, _ in STAGES]),
    train_cfg=dict(
        rpn=dict(assigner=RPN_ASSIGNER, sampler=RPN_SAMPLER, allowed_border=0, pos_weight=-1,
                 debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=2000,
                          nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=[t for _, t in STAGES]),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=0),
        rcnn=RCNN_TEST))}


def backbone(embed_dims, depths, shift_size, drop_path_rate):
    return {'model.backbone.embed_dims': embed_dims, 'model.backbone.depths': depths,
            'model.backbone.shift_size': shift_size,
            'model.backbone.drop_path_rate': drop_path_rate,
            'model.neck.in_channels': [embed_dims * 2**i for i in range(4)]}


ONE_X = {'train_cfg.max_epochs': 12, 'param_scheduler.1.end': 12,
         'param_scheduler.1.milestones': [8, 11]}
THREE_X = {'train_cfg.max_epochs': 36, 'param_scheduler.1.end': 36,
           'param_scheduler.1.milestones': [27, 33]}
T, S, B = (96, [2, 2, 6, 2]), (96, [2, 2, 18, 2]), (128, [2, 2, 18, 2])

# ours -> (released file in configs/asmlp/, its values)
COCO = {
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py': (
        'cascade_mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_1x_coco',
        {**CASCADE_MODEL, **backbone(*T, 5, 0.1), **ONE_X}),
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-3x_coco.py': (
        'cascade_mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_3x_coco',
        {**CASCADE_MODEL, **backbone(*T, 3, 0.2), **THREE_X}),
    # the released file has T's depths: a row of the docs' table (the paper's S)
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-small_fpn_ms-crop-1x_coco.py': (
        'cascade_mask_rcnn_asmlp_small_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_1x_coco',
        {**CASCADE_MODEL, **backbone(*T, 5, 0.1), **ONE_X}),
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-small_fpn_ms-crop-3x_coco.py': (
        'cascade_mask_rcnn_asmlp_small_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_3x_coco',
        {**CASCADE_MODEL, **backbone(*S, 3, 0.2), **THREE_X}),
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-base_fpn_ms-crop-1x_coco.py': (
        'cascade_mask_rcnn_asmlp_base_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_1x_coco',
        {**CASCADE_MODEL, **backbone(*B, 5, 0.2), **ONE_X}),
    'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-base_fpn_ms-crop-3x_coco.py': (
        'cascade_mask_rcnn_asmlp_base_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_3x_coco',
        {**CASCADE_MODEL, **backbone(*B, 5, 0.3), **THREE_X}),
    'mask_rcnn/mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py': (
        'mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_adamw_1x_coco',
        {**MASK_RCNN_MODEL, **backbone(*T, 5, 0.2), **ONE_X}),
    'mask_rcnn/mask-rcnn_asmlp-tiny_fpn_ms-crop-3x_coco.py': (
        'mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_adamw_3x_coco',
        {**MASK_RCNN_MODEL, **backbone(*T, 5, 0.2), **THREE_X}),
    'mask_rcnn/mask-rcnn_asmlp-small_fpn_ms-crop-1x_coco.py': (
        'mask_rcnn_asmlp_small_patch4_shift5_mstrain_480-800_adamw_1x_coco',
        {**MASK_RCNN_MODEL, **backbone(*S, 5, 0.2), **ONE_X}),
    'mask_rcnn/mask-rcnn_asmlp-small_fpn_ms-crop-3x_coco.py': (
        'mask_rcnn_asmlp_small_patch4_shift5_mstrain_480-800_adamw_3x_coco',
        {**MASK_RCNN_MODEL, **backbone(*S, 3, 0.2), **THREE_X}),
}

# ---------------------------------------------------------------------------------------
# ADE20K: svip-lab/AS-MLP-Semantic-Segmentation (mmseg 0.x)
# ---------------------------------------------------------------------------------------
SYNC_BN = dict(type='SyncBN', requires_grad=True)
# configs/asmlp/upernet_*.py and the bases: _base_/models/upernet_swin.py (heads),
# _base_/datasets/ade20k.py, _base_/schedules/schedule_160k.py, _base_/default_runtime.py
ADE_RECIPE = {
    'model.decode_head': dict(
        type='UPerHead', in_index=[0, 1, 2, 3], pool_scales=[1, 2, 3, 6], channels=512,
        dropout_ratio=0.1, num_classes=150, norm_cfg=SYNC_BN, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    'model.auxiliary_head': dict(
        type='FCNHead', in_index=2, channels=256, num_convs=1, concat_input=False,
        dropout_ratio=0.1, num_classes=150, norm_cfg=SYNC_BN, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    'model.test_cfg.mode': 'whole',
    'model.data_preprocessor.mean': [123.675, 116.28, 103.53],
    'model.data_preprocessor.std': [58.395, 57.12, 57.375],
    'model.data_preprocessor.bgr_to_rgb': True,
    'model.data_preprocessor.pad_val': 0,
    'model.data_preprocessor.seg_pad_val': 255,
    'model.data_preprocessor.size': [512, 512],  # Pad(size=crop_size) in the pipeline
    'train_dataloader.dataset.data_root': 'data/ade/ADEChallengeData2016',
    'train_dataloader.dataset.pipeline': [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=[2048, 512], ratio_range=[0.5, 2.0], keep_ratio=True),
        dict(type='RandomCrop', crop_size=[512, 512], cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'),
        dict(type='PackSegInputs'),
    ],
    'test_dataloader.dataset.pipeline.1': dict(type='Resize', scale=[2048, 512],
                                               keep_ratio=True),
    'train_dataloader.batch_size': 2,  # data=dict(samples_per_gpu=2), 8 GPUs
    'train_dataloader.num_workers': 4,
    'auto_scale_lr.base_batch_size': 16,
    'optim_wrapper.type': 'OptimWrapper',  # float32: no fp16 in this release
    'optim_wrapper.optimizer': dict(type='AdamW', lr=6e-5, betas=[0.9, 0.999],
                                    weight_decay=0.01),
    'optim_wrapper.paramwise_cfg.custom_keys': Exact(
        absolute_pos_embed=dict(decay_mult=0.),
        relative_position_bias_table=dict(decay_mult=0.),
        norm=dict(decay_mult=0.)),
    'train_cfg.max_iters': 160000,
    'train_cfg.val_interval': 16000,
    'default_hooks.checkpoint.interval': 16000,
    'default_hooks.logger.interval': 50,
    'val_evaluator.iou_metrics': ['mIoU'],
    'env_cfg.cudnn_benchmark': True,
    'model.backbone.patch_size': 4,
    'model.backbone.mlp_ratio': 4.,
    'model.backbone.drop_rate': 0.,
    'model.backbone.out_indices': [0, 1, 2, 3],
}
ADE = {
    f'upernet/upernet_asmlp-{name}_8xb2-160k_ade20k-512x512.py': (
        f'upernet_asmlp_{name}_patch4_shift5_512x512_160k_ade20k',
        {'model.backbone.embed_dims': dims, 'model.backbone.depths': depths,
         'model.backbone.shift_size': shift, 'model.backbone.drop_path_rate': rate,
         'model.decode_head.in_channels': [dims * 2**i for i in range(4)],
         'model.auxiliary_head.in_channels': dims * 4})
    for name, dims, depths, shift, rate in (('tiny', *T, 5, 0.3), ('small', *S, 3, 0.3),
                                            ('base', *B, 5, 0.5))
}
# lr_config: policy='poly', power=1.0, min_lr=0.0, by_epoch=False, linear warm-up of 1500
# iterations from warmup_ratio=1e-6 (mmcv: the warm-up factor times the poly of all iterations)
ADE_WARMUP, ADE_RATIO, ADE_ITERS, ADE_LR = 1500, 1e-6, 160000, 6e-5

# ---------------------------------------------------------------------------------------
# ImageNet-1K: svip-lab/AS-MLP (config.py defaults, configs/*.yaml, train_scripts/*.sh)
# ---------------------------------------------------------------------------------------
BATCH = 8 * 128  # --nproc_per_node 8 --batch-size 128
SCALE = BATCH / 512  # main.py: every rate is per 512 images
IMAGENET_RECIPE = {
    'train_dataloader.batch_size': 128,
    'auto_scale_lr.base_batch_size': BATCH,
    'train_dataloader.drop_last': True,
    'optim_wrapper.type': 'apex O1',
    'optim_wrapper.loss_scale': 'dynamic',
    'optim_wrapper.optimizer': dict(type='AdamW', lr=5e-4 * SCALE, eps=1e-8,
                                    betas=[0.9, 0.999], weight_decay=0.05),
    # optimizer.py: no decay for every 1-D parameter and every bias
    'optim_wrapper.paramwise_cfg': Exact(norm_decay_mult=0., bias_decay_mult=0.,
                                         flat_decay_mult=0.),
    'optim_wrapper.clip_grad.max_norm': 5.0,
    'lr.warmup_start': 5e-7 * SCALE,
    'lr.floor': 5e-6 * SCALE,
    'param_scheduler.0.end': 20,
    'train_cfg.max_epochs': 300,
    'model.train_cfg.augments': [dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)],
    'model.head.loss.label_smooth_val': 0.1,
    'model.head.loss.mode': 'original',
    'model.head.init_cfg': dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    'model.backbone.patch_size': 4,
    'model.backbone.mlp_ratio': 4.,
    'model.backbone.drop_rate': 0.,
    'train_dataloader.dataset.pipeline': [
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=224, interpolation='bicubic'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
             magnitude_level=9, magnitude_std=0.5, hparams=dict(interpolation='bicubic')),
        dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
             max_area_ratio=1 / 3),
        dict(type='PackInputs'),
    ],
    # TEST.CROP: resize to 224 / 0.875, center crop 224
    'test_dataloader.dataset.pipeline.1': dict(type='ResizeEdge', scale=256, edge='short',
                                               interpolation='bicubic'),
    'test_dataloader.dataset.pipeline.2': dict(type='CenterCrop', crop_size=224),
    'randomness': dict(seed=0, diff_rank_seed=True),  # SEED 0 + the process's rank
}
IMAGENET = {
    f'asmlp/asmlp-{name}_8xb128_in1k.py': (
        f'configs/as_{name}_patch4_shift5_224.yaml',
        {'model.backbone.embed_dims': dims, 'model.backbone.depths': depths,
         'model.backbone.shift_size': 5, 'model.backbone.drop_path_rate': rate,
         'model.head.in_channels': dims * 8, 'model.head.num_classes': 1000})
    for name, dims, depths, rate in (('tiny', *T, 0.2), ('small', *S, 0.3),
                                     ('base', *B, 0.5))
}

RELEASED = {}
for table, recipe in ((COCO, COCO_RECIPE), (ADE, ADE_RECIPE), (IMAGENET, IMAGENET_RECIPE)):
    for ours, (source, values) in table.items():
        RELEASED[ours] = (source, {**recipe, **values})


# ---------------------------------------------------------------------------------------
# reading the configs
# ---------------------------------------------------------------------------------------
_LOADED = {}


def load(name):
    if name not in _LOADED:
        _LOADED[name] = Config.fromfile(osp.join(CONFIGS, name))
    return _LOADED[name]


def plain(value):
    """A config value as plain data: dicts, lists (for tuples too) and scalars."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


MISSING = object()


def lookup(cfg, setting):
    """The value of a dotted ``setting`` in ``cfg`` (list items by index), MISSING where
    the config has none. ``model.backbone.embed_dims``/``depths`` are those of its
    ``arch`` preset, other keys of an ASMLP backbone that the config leaves out its
    defaults; ``lr.*`` are rates of the schedule."""
    from asmlp_mm import ASMLP
    if setting in ('model.backbone.embed_dims', 'model.backbone.depths'):
        arch = cfg.model.backbone.arch
        arch = ASMLP.arch_zoo[arch] if isinstance(arch, str) else arch
        return plain(arch[setting.rsplit('.', 1)[1]])
    if setting == 'lr.warmup_start':
        return cfg.optim_wrapper.optimizer.lr * cfg.param_scheduler[0].start_factor
    if setting == 'lr.floor':
        return cfg.optim_wrapper.optimizer.lr * cfg.param_scheduler[1].eta_min_ratio
    value = cfg
    for part in setting.split('.'):
        try:
            value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
        except (KeyError, IndexError, ValueError):
            value = MISSING
            break
    parent, _, key = setting.rpartition('.')
    if value is MISSING and parent == 'model.backbone' and cfg.model.backbone.type == 'ASMLP':
        default = inspect.signature(ASMLP).parameters.get(key)
        return MISSING if default is None else plain(default.default)
    return plain(value)


def leaves(expected, prefix):
    """(dotted setting, value) for every leaf of ``expected``: a released config restated
    is compared key by key, so keys that the release does not set stay free."""
    if isinstance(expected, dict) and expected and not isinstance(expected, Exact):
        for key, value in expected.items():
            yield from leaves(value, f'{prefix}.{key}')
    elif (isinstance(expected, list) and expected
          and all(isinstance(v, (dict, list)) for v in expected)):
        for i, value in enumerate(expected):
            yield from leaves(value, f'{prefix}.{i}')
    else:
        yield prefix, plain(expected)


def same(ours, released):
    if isinstance(released, float) and isinstance(ours, (int, float)):
        return ours == pytest.approx(released, rel=1e-9)
    if isinstance(released, list) and isinstance(ours, list) and len(ours) == len(released):
        return all(same(o, r) for o, r in zip(ours, released))
    if released is None:
        return ours is None or ours is MISSING
    return ours == released


# ---------------------------------------------------------------------------------------
# the table of docs/released_configs.md
# ---------------------------------------------------------------------------------------
def deviation_rows():
    """The rows of the docs' table: (config pattern, setting, released cell, here cell)."""
    with open(DOC) as f:
        text = f.read()
    section = text.split('## Values that differ from the release', 1)[1].split('\n## ')[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) != 5 or cells[0] in ('config', '---'):
            continue
        pattern, setting, released, here = (re.sub(r'^`(.*)`$', r'\1', c) for c in cells[:4])
        rows.append((pattern, setting, released, here))
    return rows


ROWS = deviation_rows()


def configs_matching(pattern):
    names = [osp.relpath(p, CONFIGS) for p in glob.glob(osp.join(CONFIGS, '*', '*.py'))]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def documented(config, setting):
    """The rows of the docs' table that cover ``setting`` (or a key above it) of
    ``config``."""
    return [row for row in ROWS if fnmatch.fnmatch(config, row[0])
            and (setting == row[1] or setting.startswith(row[1] + '.'))]


def literal(cell):
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return MISSING


def timm_warmup_shortfall(cfg, per_epoch=200):
    """How far below timm's warm-up (the released scheduler) mmengine's rate falls in the
    config's warm-up, at most (a fraction of timm's rate); built as the runner builds the
    schedulers, ``per_epoch`` iterations an epoch."""
    from mmengine.registry import PARAM_SCHEDULERS
    epochs = cfg.train_cfg.max_epochs
    base = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedulers = []
    for scheduler in copy.deepcopy(plain(cfg.param_scheduler)):
        scheduler.pop('convert_to_iter_based')
        scheduler.setdefault('end', epochs)
        schedulers.append(PARAM_SCHEDULERS.get(scheduler.pop('type')).build_iter_from_epoch(
            optimizer, epoch_length=per_epoch, **scheduler))
    warmup_iters = cfg.param_scheduler[0].end * per_epoch
    start = base * cfg.param_scheduler[0].start_factor
    shortfall = 0.
    for t in range(warmup_iters):
        timm = start + t * (base - start) / warmup_iters
        shortfall = max(shortfall, 1 - optimizer.param_groups[0]['lr'] / timm)
        for scheduler in schedulers:
            scheduler.step()
    return shortfall


def test_the_docs_table_has_rows():
    assert len(ROWS) >= 10
    assert all(configs_matching(pattern) for pattern, *_ in ROWS), \
        [pattern for pattern, *_ in ROWS if not configs_matching(pattern)]


@pytest.mark.parametrize('row', ROWS, ids=lambda row: f'{row[0]}:{row[1]}')
def test_each_documented_deviation_is_in_the_configs(row):
    """Each config the row names holds the row's value, and it is not the released one."""
    pattern, setting, released, here = row
    for name in configs_matching(pattern):
        cfg = load(name)
        if setting == 'learning rate in the warm-up':
            # the cosine's drop by the warm-up's end, as the docs say: 1.1% at 20 of 300
            epochs, warmup = cfg.train_cfg.max_epochs, cfg.param_scheduler[0].end
            drop = 1 - 0.5 * (1 + math.cos(math.pi * warmup / epochs))
            assert timm_warmup_shortfall(cfg) == pytest.approx(drop, rel=0.05), name
            continue
        value = lookup(cfg, setting)
        assert value is not MISSING, (name, setting)
        assert same(value, plain(literal(here))), (name, setting, value, here)
        if literal(released) is not MISSING:
            assert not same(value, plain(literal(released))), (name, setting)


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_config_has_the_released_values(name):
    """Every value the release sets (restated in RELEASED) is the config's, or a row of the
    docs' table."""
    source, values = RELEASED[name]
    cfg = load(name)
    wrong = []
    for top, expected in values.items():
        for setting, released in leaves(expected, top):
            ours = lookup(cfg, setting)
            if not same(ours, released) and not documented(name, setting):
                wrong.append(f'{setting}: released {released!r}, here {ours!r}')
    assert not wrong, f'{name} differs from the released {source}:\n' + '\n'.join(wrong)


def test_released_values_and_docs_agree_on_the_paper_exception():
    """The one place where the configs follow the paper over a released value: Cascade
    S-1x has S's depths, the released file T's (documented, and restated above)."""
    name = 'cascade_mask_rcnn/cascade-mask-rcnn_asmlp-small_fpn_ms-crop-1x_coco.py'
    released = RELEASED[name][1]['model.backbone.depths']
    row, = documented(name, 'model.backbone.depths')
    assert literal(row[2]) == released == [2, 2, 6, 2]
    assert lookup(load(name), 'model.backbone.depths') == [2, 2, 18, 2]


def test_upernet_learning_rate_is_mmcvs_poly_with_warmup():
    """mmcv's iteration-based poly with linear warm-up (the release's lr_config): the warm-up
    factor 1e-6 + (1 - 1e-6) i / 1500 times the poly of all 160k iterations, here within
    one warm-up step (mmengine's LinearLR reaches 1 one iteration before its end)."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load('upernet/upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py')
    assert cfg.optim_wrapper.optimizer.lr == ADE_LR
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ADE_LR)
    schedulers = []
    for scheduler in copy.deepcopy(plain(cfg.param_scheduler)):
        schedulers.append(PARAM_SCHEDULERS.get(scheduler.pop('type'))(optimizer, **scheduler))
    checked = {1, 10, 700, 1499, 1500, 1501, 30000, 80000, 159000}
    for i in range(max(checked) + 1):
        if i in checked:
            warmup = 1 - (1 - i / ADE_WARMUP) * (1 - ADE_RATIO) if i < ADE_WARMUP else 1.
            mmcv = ADE_LR * (1 - i / ADE_ITERS) * warmup
            assert optimizer.param_groups[0]['lr'] == pytest.approx(
                mmcv, rel=1.5 / ADE_WARMUP), i
        for scheduler in schedulers:
            scheduler.step()


def test_every_released_config_has_a_config_here():
    """The ten COCO, three ADE20K and three ImageNet releases, one config each, and each of
    those states the released file it follows."""
    assert len(COCO) == 10 and len(ADE) == 3 and len(IMAGENET) == 3
    for name, (source, _) in RELEASED.items():
        with open(osp.join(CONFIGS, name)) as f:
            head = ''.join(line[2:].strip() for line in f if line.startswith('#'))
        stem = osp.basename(source).replace('.yaml', '')
        # the comments wrap long file names: compare without spaces
        assert stem.replace('_', '') in head.replace(' ', '').replace('_', ''), name
