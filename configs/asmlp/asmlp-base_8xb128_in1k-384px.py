# AS-MLP-B fine-tuned at 384x384 from the 224 model. The paper does not list this recipe;
# this is Swin's 384 fine-tuning recipe, which the released AS-MLP code follows: 30 epochs,
# batch 1024, AdamW, weight decay 1e-8, 5 warm-up epochs, cosine. Its rates (2e-5, warm-up
# from 2e-8, floor 2e-7) are per 512 images and scaled linearly with the batch, so at 1024:
# lr 4e-5 from 4e-8 to 4e-7 (as the 224 configs' 5e-4 becomes 1e-3).
_base_ = './asmlp-base_8xb128_in1k.py'

# the 224 model to fine-tune: trained with asmlp-base_8xb128_in1k.py or converted from the
# published weights (tools/model_converters/asmlp_to_mm.py); another one with
# --cfg-options load_from=work_dirs/asmlp-base_8xb128_in1k/epoch_300.pth
load_from = 'checkpoints/asmlp-base_8xb128_in1k.pth'

img_size = 384
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size, backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=[103.53, 116.28, 123.675],
         fill_std=[57.375, 57.12, 58.395]),
    dict(type='PackInputs'),
]
# Swin evaluates 384 models on the full image (crop ratio 1.0)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_size, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))

optim_wrapper = dict(optimizer=dict(lr=4e-5, weight_decay=1e-8))
# timm's cosine over the whole run, as in the 224 configs (6.7% below the peak when the
# 5 warm-up epochs end), down to 4e-7 = 0.01 x the peak
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=0,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=30)
