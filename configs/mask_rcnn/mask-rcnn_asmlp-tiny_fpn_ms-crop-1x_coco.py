# Mask R-CNN with an AS-MLP-T backbone and FPN on COCO 2017, 1x schedule: mmdet's Mask R-CNN
# (Shared2FC box head, L1 box loss) with the AS-MLP recipe of configs/_base_/det_*.py
# (AdamW, multi-scale training with the DETR-style crop branch), as the paper trains it.
# Values: the authors' configs/asmlp/mask_rcnn_asmlp_tiny_patch4_shift5_mstrain_480-800_
# adamw_1x_coco.py and its base _base_/models/mask_rcnn_asmlp_fpn.py (svip-lab/AS-MLP-
# Object-Detection): C 96, depths 2-2-6-2, shift size 5, drop path 0.2.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/det_coco-instance_ms-crop_adamw-1x.py',
]

# An mmpretrain AS-MLP-T ImageNet-1K classifier checkpoint (keys "backbone.*"); set your own
# path or override it: --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/asmlp-tiny_8xb128_in1k.pth'
embed_dims = 96

model = dict(
    backbone=dict(
        _delete_=True,
        type='ASMLP',
        arch='tiny',
        shift_size=5,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)]))
