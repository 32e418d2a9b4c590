# Cascade Mask R-CNN, AS-MLP-B, FPN, COCO 2017, 3x: the 1x config trained for 36 epochs
# (lr x0.1 after epochs 27 and 33). Values: the authors' configs/asmlp/cascade_mask_rcnn_
# asmlp_base_patch4_shift5_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py: drop path 0.3,
# shift size 5.
_base_ = './cascade-mask-rcnn_asmlp-base_fpn_ms-crop-1x_coco.py'

model = dict(backbone=dict(drop_path_rate=0.3))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    _base_.param_scheduler[0],  # the 1x config's warm-up
    dict(_base_.param_scheduler[1], end=max_epochs, milestones=[27, 33]),
]
