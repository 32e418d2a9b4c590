# AS-MLP-B (C=128, depths 2-2-18-2, drop path 0.5); recipe as AS-MLP-T.
_base_ = './asmlp-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='base'), head=dict(in_channels=1024))
