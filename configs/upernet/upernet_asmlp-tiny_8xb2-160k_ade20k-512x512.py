# UperNet + AS-MLP-T on ADE20K (150 classes), the paper's recipe (Swin's): 512x512 crops of
# images resized to 2048x512 x [0.5, 2.0], 160k iterations at batch 16 (8 GPUs x 2), AdamW
# lr 6e-5, weight decay 0.01 (none on the backbone's norms), 1500 linear warm-up iterations
# over a poly (power 1) decay that spans all 160k. FCN auxiliary head on stage 3, float32.
# Single-scale mIoU by default; `tools/test.py CONFIG CKPT --tta` gives the multi-scale + flip
# mIoU of the paper. Values: the authors' configs/asmlp/upernet_asmlp_tiny_patch4_shift5_
# 512x512_160k_ade20k.py (svip-lab/AS-MLP-Semantic-Segmentation, mmseg 0.x): C 96, depths
# 2-2-6-2, shift size 5, drop path 0.3; its model base (upernet_asmlp.py) is missing from
# the release, the heads here are those of the release's upernet_swin.py (mmseg's own).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/asmlp_runtime.py'
]
custom_imports = dict(imports=['asmlp_mm', 'asmlp_mm.runtime', 'asmlp_mm.datasets.ade'],
                      allow_failed_imports=False)
# ADE20KDataset with checks of bad data (asmlp_mm/datasets/ade.py): an image without its
# label map (or the reverse) fails when the dataset is built, label values outside the
# classes fail when their sample is loaded
dataset_type = 'CheckedADE20KDataset'

# An mmpretrain AS-MLP-T classifier checkpoint: trained with
# configs/asmlp/asmlp-tiny_8xb128_in1k.py or converted from the published weights with
# tools/model_converters/asmlp_to_mm.py. Override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
checkpoint_file = 'checkpoints/asmlp-tiny_8xb128_in1k.pth'

crop_size = (512, 512)
embed_dims = 96  # of stage 1; stage i has embed_dims * 2**i channels
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='ASMLP',
        arch='tiny',
        shift_size=5,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    decode_head=dict(in_channels=[embed_dims * 2**i for i in range(4)],  # SyncBN
                     num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims * 4, num_classes=150))

# float32, as the released runs (no apex here); the constructor lets --amp (ours, mmseg's)
# fall back to bfloat16 autocast where AmpOptimWrapper cannot run (asmlp_mm.runtime.amp)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='AmpFallbackOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # every norm of the backbone has "norm" in its name (GroupNorm, one group)
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# mmcv's poly schedule with linear warm-up, as released: the poly decay spans all 160k
# iterations and the warm-up factor multiplies it over the first 1500 (mmengine multiplies
# overlapping schedulers, so this is mmcv's rate at every iteration)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=0, end=160000),
]

# 8 GPUs x 2 images (tools/train.py --auto-scale-lr scales lr to another total batch)
train_dataloader = dict(batch_size=2, dataset=dict(type=dataset_type))
auto_scale_lr = dict(enable=False, base_batch_size=16)
val_dataloader = dict(batch_size=1, dataset=dict(type=dataset_type))
test_dataloader = val_dataloader

# Multi-scale + flip test as the paper's mmseg 0.x `--aug-test`: scales are the ratios of
# the 2048x512 test scale (mmseg 1.x's base scales the original image instead).
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
             for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]
