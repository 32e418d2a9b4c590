# The AS-MLP COCO recipe shared by the Cascade Mask R-CNN and Mask R-CNN configs, everything
# but the model, as in the authors' released mmdet 2.x configs (svip-lab/AS-MLP-Object-
# Detection, configs/asmlp/*_coco.py, all ten alike here): COCO 2017 instances from
# data/coco/ (OpenMMLab layout), batch 16 (8 GPUs x 2 images), multi-scale training (short
# side 480..800 in steps of 32, long side <= 1333) with the DETR-style crop branch, test at
# 1333x800, AdamW (lr 1e-4, weight decay 0.05, none on norm layers), mixed precision (apex O1
# there, AmpOptimWrapper here), 1x schedule: 12 epochs, lr x0.1 after epochs 8 and 11, 500
# linear warm-up iterations from 0.001 x the lr. Deviations: docs/released_configs.md.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './asmlp_runtime.py',
]
custom_imports = dict(imports=['asmlp_mm', 'asmlp_mm.runtime', 'asmlp_mm.datasets.coco'],
                      allow_failed_imports=False)
# CocoDataset that fails when it is built if an image of the annotation file is missing
# (asmlp_mm/datasets/coco.py); every detection config inherits it from here
dataset_type = 'CheckedCocoDataset'

ms_scales = [(short_side, 1333) for short_side in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2,
                        dataset=dict(type=dataset_type, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader

# float16 autocast with dynamic loss scaling on CUDA, as the released runs (apex O1); the
# constructor falls back to bfloat16 autocast where AmpOptimWrapper cannot run (CPU), and
# optim_wrapper.type=OptimWrapper trains in float32 (asmlp_mm.runtime.amp)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='AmpFallbackOptimWrapperConstructor',
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # the backbone's GroupNorms (every parameter named *norm*), as the authors' released
    # configs and mmdet's Swin configs; the heads' SyncBN ("bn") keeps the weight decay
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
