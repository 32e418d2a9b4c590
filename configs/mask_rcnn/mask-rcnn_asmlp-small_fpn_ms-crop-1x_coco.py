# Mask R-CNN, AS-MLP-S, FPN, COCO 2017, 1x: the AS-MLP-T config with the S backbone.
_base_ = './mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

pretrained = 'checkpoints/asmlp-small_8xb128_in1k.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
