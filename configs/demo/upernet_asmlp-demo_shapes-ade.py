# CPU demo of the UperNet + AS-MLP-T ADE20K config: the same segmentor, pipelines and
# recipe, with what 2 CPU cores need: a tiny AS-MLP trained from scratch, thin heads, a
# tiny ADE20K-format dataset of three shapes, each drawn in its class colour (0 = other/
# ignored, labels 1..3, as ADE20K:
# `python tools/make_demo_data.py ade data/demo/shapes_ade`), 64x80 images, a short
# schedule (200 iterations) and 3 scales + flip for --tta. Trains in about 10 s.
_base_ = '../upernet/upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py'

data_root = 'data/demo/shapes_ade'
dataset_type = 'ShapesADE20KDataset'  # the base's CheckedADE20KDataset with the shape classes
num_classes = 3
crop_size = (64, 64)
scale = (256, 64)  # plays the role of 2048x512
max_iters = 200
embed_dims = 16

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch=dict(_delete_=True, embed_dims=embed_dims, depths=[1, 1, 1, 1]),
                  drop_path_rate=0.,
                  init_cfg=None),  # no ImageNet classifier here: trained from scratch
    decode_head=dict(in_channels=[embed_dims * 2**i for i in range(4)], channels=32,
                     num_classes=num_classes),
    auxiliary_head=dict(in_channels=embed_dims * 4, channels=16, num_classes=num_classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
img_ratios = [0.5, 1.0, 1.5]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(scale[0] * r), int(scale[1] * r)),
                  keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=max_iters // 10),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=max_iters // 10,
         end=max_iters),
]
# reseeds per batch, so that an interrupted + resumed run equals an uninterrupted one
train_cfg = dict(type='ReseedingIterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=True)
