from .axial_shift import PADDING_MODES, axial_shift, check_shift_args
from .pointwise import channel_mlp, conv_gelu, no_fusion, packed_weights, pointwise_conv

__all__ = ['axial_shift', 'check_shift_args', 'PADDING_MODES', 'channel_mlp', 'conv_gelu',
           'no_fusion', 'packed_weights', 'pointwise_conv']
