# UperNet + AS-MLP-S on ADE20K; recipe as AS-MLP-T. Values: the authors' configs/asmlp/
# upernet_asmlp_small_patch4_shift5_512x512_160k_ade20k.py: C 96, depths 2-2-18-2, drop path
# 0.3, shift size 3 (its name says shift5; 3 is what ran, from the shift-5 classifier: the
# shift has no weights).
_base_ = './upernet_asmlp-tiny_8xb2-160k_ade20k-512x512.py'

checkpoint_file = 'checkpoints/asmlp-small_8xb128_in1k.pth'  # mmpretrain AS-MLP-S classifier
model = dict(
    backbone=dict(arch='small', shift_size=3, drop_path_rate=0.3,
                  init_cfg=dict(checkpoint=checkpoint_file)))
