# AS-MLP-T, ImageNet-1K from scratch: 300 epochs, batch 1024 (8 GPUs x 128).
# Swin's recipe, as the paper uses: AdamW lr 1e-3, weight decay 0.05 (none on norms and
# biases), cosine with 20 linear warm-up epochs, RandAugment m9-mstd0.5, mixup 0.8,
# cutmix 1.0, random erasing 0.25, label smoothing 0.1, grad clip 5, bicubic resizing,
# test resize 256 + center crop 224, mixed precision.
# Values: the authors' svip-lab/AS-MLP, config.py defaults (rates per 512 images, scaled
# with the batch by main.py: lr 5e-4, warm-up from 5e-7, floor 5e-6), configs/as_tiny_
# patch4_shift5_224.yaml and train_scripts/train_asmlp_t.sh (8 GPUs x 128, apex O1).
# Deviations: docs/released_configs.md.
_base_ = [
    '../_base_/models/asmlp-tiny_in1k.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/asmlp_runtime.py',
]

# ImageNet with checks of the list files and images (asmlp_mm/datasets/imagenet.py)
custom_imports = dict(imports=['asmlp_mm', 'asmlp_mm.runtime', 'asmlp_mm.datasets.imagenet'],
                      allow_failed_imports=False)
# the released loader drops the last incomplete batch of each epoch
train_dataloader = dict(batch_size=128, drop_last=True, dataset=dict(type='CheckedImageNet'))
val_dataloader = dict(batch_size=128, dataset=dict(type='CheckedImageNet'))
test_dataloader = dict(batch_size=128, dataset=dict(type='CheckedImageNet'))

# mmpretrain's visualizer, restated: inherited through "mmpretrain::" it carries a _scope_
# key, which mmpretrain's tools/visualization/browse_dataset.py passes on to the
# visualizer's constructor (TypeError)
visualizer = dict(_delete_=True, type='UniversalVisualizer',
                  vis_backends=[dict(type='LocalVisBackend')])

# float16 autocast with dynamic loss scaling on CUDA, as the released runs (apex O1); the
# constructor falls back to bfloat16 autocast where AmpOptimWrapper cannot run (CPU), and
# optim_wrapper.type=OptimWrapper trains in float32 (asmlp_mm.runtime.amp)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='AmpFallbackOptimWrapperConstructor',
    clip_grad=dict(max_norm=5.0),
    # no weight decay on 1-D parameters (norms) and biases, as the released optimizer.py;
    # mmpretrain's Swin keys (absolute_pos_embed, relative_position_bias_table) are left
    # out: AS-MLP has no such parameters
    paramwise_cfg=dict(_delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0,
                       flat_decay_mult=0.0))
# The learning rate of the released AS-MLP (and Swin) code: timm's cosine scheduler, stepped
# every iteration (t_in_epochs=False; mmpretrain's Swin schedule steps the cosine once an
# epoch), whose cosine spans the whole run, warm-up included, so that it is already 1.1%
# below the peak when the warm-up ends. Hence the cosine begins at 0 and overlaps the
# warm-up (mmengine multiplies the two there, up to 1.1% below timm's warm-up); from the
# end of the warm-up on, the rate is timm's (tests/test_classification.py). Its floor is
# 1e-5 = 0.01 x the peak, given as a ratio so that --auto-scale-lr scales it with the peak,
# as the released code scales all three rates with the batch.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=0,
         convert_to_iter_based=True),
]

# the released main.py seeds each process with 0 + its rank
randomness = dict(seed=0, diff_rank_seed=True)
