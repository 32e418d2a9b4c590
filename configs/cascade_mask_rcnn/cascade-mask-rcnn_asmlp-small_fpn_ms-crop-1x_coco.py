# Cascade Mask R-CNN, AS-MLP-S, FPN, COCO 2017, 1x: the AS-MLP-T config with the S backbone.
# Values: the authors' configs/asmlp/cascade_mask_rcnn_asmlp_small_patch4_shift5_mstrain_
# 480-800_giou_4conv1f_adamw_1x_coco.py: shift size 5, drop path 0.1. That file is a copy of
# the T-1x one, T's depths 2-2-6-2 included, while the paper's row for it has S's 107M
# parameters: the depths here are the paper's, S's 2-2-18-2 (docs/released_configs.md).
_base_ = './cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

pretrained = 'checkpoints/asmlp-small_8xb128_in1k.pth'
model = dict(
    backbone=dict(arch='small', shift_size=5, drop_path_rate=0.1,
                  init_cfg=dict(checkpoint=pretrained)))
