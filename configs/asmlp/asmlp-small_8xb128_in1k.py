# AS-MLP-S (C=96, depths 2-2-18-2, drop path 0.3); recipe as AS-MLP-T.
_base_ = './asmlp-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='small'))
