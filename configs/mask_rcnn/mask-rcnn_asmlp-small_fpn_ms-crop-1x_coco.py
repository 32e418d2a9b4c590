# Mask R-CNN, AS-MLP-S, FPN, COCO 2017, 1x: the AS-MLP-T config with the S backbone.
# Values: the authors' configs/asmlp/mask_rcnn_asmlp_small_patch4_shift5_mstrain_480-800_
# adamw_1x_coco.py: C 96, depths 2-2-18-2, shift size 5, drop path 0.2.
_base_ = './mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

pretrained = 'checkpoints/asmlp-small_8xb128_in1k.pth'
model = dict(
    backbone=dict(arch='small', shift_size=5, drop_path_rate=0.2,
                  init_cfg=dict(checkpoint=pretrained)))
