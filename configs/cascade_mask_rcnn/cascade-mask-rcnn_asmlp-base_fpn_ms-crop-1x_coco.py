# Cascade Mask R-CNN, AS-MLP-B, FPN, COCO 2017, 1x: the AS-MLP-T config with the B backbone.
_base_ = './cascade-mask-rcnn_asmlp-tiny_fpn_ms-crop-1x_coco.py'

pretrained = 'checkpoints/asmlp-base_8xb128_in1k.pth'
embed_dims = 128
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)]))
