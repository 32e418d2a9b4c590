# Cascade Mask R-CNN, AS-MLP-B, FPN, COCO 2017, 1x: the AS-MLP-T config with the B backbone.
# Values: the authors' configs/asmlp/cascade_mask_rcnn_asmlp_base_patch4_shift5_mstrain_
# 480-800_giou_4conv1f_adamw_1x_coco.py: C 128, depths 2-2-18-2, shift size 5, drop path 0.2.
_base_ = './cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

pretrained = 'checkpoints/asmlp-base_8xb128_in1k.pth'
embed_dims = 128
model = dict(
    backbone=dict(arch='base', shift_size=5, drop_path_rate=0.2,
                  init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)]))
