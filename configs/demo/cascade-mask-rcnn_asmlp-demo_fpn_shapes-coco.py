# CPU demo of the AS-MLP-T Cascade Mask R-CNN config: the same detector and recipe (4conv1fc
# GIoU cascade heads, AdamW without decay on norms), changed only where a CPU needs it: a tiny
# AS-MLP trained from scratch, narrow FPN and heads, fewer RoIs, 96-pixel images, a short
# schedule and the tiny shapes dataset written by `tools/make_demo_data.py coco`.
# Trains in about 30 s on one CPU thread (`python tools/demo.py det`, which also evaluates).
_base_ = '../cascade_mask_rcnn/cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

data_root = 'data/demo/shapes_coco/'
# asmlp_mm.datasets.SHAPE_CLASSES, in category-id order
metainfo = dict(classes=('square', 'circle', 'triangle'))
num_classes = 3
embed_dims = 16
channels = 32  # FPN, RPN and RoI head width (256 in the real config)
image_scale = (96, 96)
# same as the base config's (a list of heads cannot be merged item by item)
cascade_target_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                       [0.033, 0.033, 0.067, 0.067]]

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, depths=[1, 1, 1, 1]),
        drop_path_rate=0.,
        # from scratch: the backbone's own initialization instead of a checkpoint
        init_cfg=dict(_delete_=True, type='TruncNormal', layer='Conv2d', std=.02, bias=0.)),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        # the real config's heads with narrow widths and 3 classes
        bbox_head=[
            dict(
                type='ConvFCBBoxHead',
                num_shared_convs=4,
                num_shared_fcs=1,
                in_channels=channels,
                conv_out_channels=channels,
                fc_out_channels=128,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                    target_stds=stds),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                norm_cfg=dict(type='SyncBN', requires_grad=True),
                loss_cls=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
            for stds in cascade_target_stds
        ],
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels,
                       num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=300, max_per_img=32)),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
dataset = dict(data_root=data_root, metainfo=metainfo)  # type: the base's CheckedCocoDataset
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# float32: on CPU the real config's AmpOptimWrapper would run as bfloat16 autocast, slow
# on CPUs without bfloat16 arithmetic (the AMP-only arguments are left out when built);
# lr from scratch: 20x the pretrained recipe's
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[max_epochs - 2], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
