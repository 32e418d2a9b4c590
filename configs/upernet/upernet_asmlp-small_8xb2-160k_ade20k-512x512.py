# UperNet + AS-MLP-S (C=96, depths 2-2-18-2, drop path 0.3) on ADE20K; recipe as AS-MLP-T.
_base_ = './upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py'

checkpoint_file = 'checkpoints/asmlp-small_8xb128_in1k.pth'  # mmpretrain AS-MLP-S classifier
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(checkpoint=checkpoint_file)))
