# CPU demo of the AS-MLP-T ImageNet config: same classifier and recipe, but a tiny AS-MLP,
# 48x48 images of three shapes (tools/make_demo_data.py cls data/demo/shapes_cls: 200
# per class) and a short schedule. Trains in about 50 s on one CPU thread.
# 200 training images per class and 40 epochs (were 20 and 8): on 20 per class it only
# remembered the images' random colours (top-1 at chance, whatever lr, warm-up, weight decay).
_base_ = '../asmlp/asmlp-tiny_8xb128_in1k.py'

data_root = 'data/demo/shapes_cls'
num_classes = 3

model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=16, depths=[1, 1, 1, 1]),
                  drop_path_rate=0.),
    head=dict(num_classes=num_classes, in_channels=128),
    train_cfg=dict(_delete_=True))  # no mixup/cutmix on 600 images
data_preprocessor = dict(num_classes=num_classes)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# float32: on CPU the real config's AmpOptimWrapper would run as bfloat16 autocast, slow
# on CPUs without bfloat16 arithmetic (the AMP-only arguments are left out when built)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1),
]
# reseeds per batch, so that an interrupted + resumed run equals an uninterrupted one
train_cfg = dict(_delete_=True, type='ReseedingEpochBasedTrainLoop', max_epochs=40,
                 val_interval=10)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=10, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=True)
