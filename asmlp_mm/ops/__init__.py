from .axial_shift import PADDING_MODES, axial_shift, check_shift_args

__all__ = ['axial_shift', 'check_shift_args', 'PADDING_MODES']
