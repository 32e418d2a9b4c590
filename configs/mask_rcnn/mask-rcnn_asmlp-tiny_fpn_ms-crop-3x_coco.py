# Mask R-CNN, AS-MLP-T, FPN, COCO 2017, 3x: the 1x config trained for 36 epochs
# (lr x0.1 after epochs 27 and 33). Values: the authors' configs/asmlp/mask_rcnn_asmlp_tiny_
# patch4_shift5_mstrain_480-800_adamw_3x_coco.py: shift size 5, drop path 0.2, as 1x.
_base_ = './mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    _base_.param_scheduler[0],  # the 1x config's warm-up
    dict(_base_.param_scheduler[1], end=max_epochs, milestones=[27, 33]),
]
