# UperNet + AS-MLP-B on ADE20K; recipe as AS-MLP-T. Values: the authors' configs/asmlp/
# upernet_asmlp_base_patch4_shift5_512x512_160k_ade20k.py: C 128, depths 2-2-18-2, shift
# size 5, drop path 0.5.
_base_ = './upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py'

checkpoint_file = 'checkpoints/asmlp-base_8xb128_in1k.pth'  # mmpretrain AS-MLP-B classifier
embed_dims = 128
model = dict(
    backbone=dict(arch='base', shift_size=5, drop_path_rate=0.5,
                  init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[embed_dims * 2**i for i in range(4)]),
    auxiliary_head=dict(in_channels=embed_dims * 4))
