# AS-MLP-T image classifier (mmpretrain). Other sizes change `arch`, the drop path rate and
# the head width. Values: the authors' svip-lab/AS-MLP, configs/as_tiny_patch4_shift5_224.yaml
# (C 96, depths 2-2-6-2, shift size 5, drop path 0.2) over its config.py defaults (label
# smoothing 0.1 inside mixup 0.8 / cutmix 1.0, switching between them with probability 0.5),
# and models/as_mlp.py: the head is one Linear, trunc-normal std 0.02 weights and zero bias.
# the run-time fixes (asmlp_mm/runtime) for whichever tool runs the config
custom_imports = dict(imports=['asmlp_mm', 'asmlp_mm.runtime'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ASMLP', arch='tiny', shift_size=5, drop_path_rate=0.2,
                  out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
