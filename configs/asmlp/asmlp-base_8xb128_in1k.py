# AS-MLP-B; recipe as AS-MLP-T. Values: the authors' svip-lab/AS-MLP, configs/
# as_base_patch4_shift5_224.yaml: C 128, depths 2-2-18-2, shift size 5, drop path 0.5.
_base_ = './asmlp-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='base', shift_size=5, drop_path_rate=0.5),
             head=dict(in_channels=1024))
