# Cascade Mask R-CNN with an AS-MLP-T backbone and FPN on COCO 2017, 1x schedule.
# The recipe of the paper, as released with Swin's detection code: "4conv1fc" box heads
# (4 shared 3x3 convs + 1 fc, SyncBN) with GIoU loss and decoded-box regression, AdamW,
# multi-scale training with the DETR-style crop branch (configs/_base_/det_*.py).
# Values: the authors' configs/asmlp/cascade_mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_
# 480-800_giou_4conv1f_adamw_1x_coco.py (svip-lab/AS-MLP-Object-Detection): C 96, depths
# 2-2-6-2, shift size 5, drop path 0.1. Its model base (cascade_mask_rcnn_asmlp_fpn.py) is
# missing from the release; mmdet's cascade-mask-rcnn_r50_fpn.py equals Swin's
# cascade_mask_rcnn_swin_fpn.py, which the release carries, in every value used here.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    '../_base_/det_coco-instance_ms-crop_adamw-1x.py',
]

# An mmpretrain AS-MLP-T ImageNet-1K classifier checkpoint (keys "backbone.*"), e.g. the
# published one converted with tools/model_converters/asmlp_to_mm.py. Set your own path, or
# override it: --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/asmlp-tiny_8xb128_in1k.pth'
embed_dims = 96

cascade_target_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                       [0.033, 0.033, 0.067, 0.067]]
model = dict(
    backbone=dict(
        _delete_=True,
        type='ASMLP',
        arch='tiny',
        shift_size=5,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in cascade_target_stds
    ]))
