from .asmlp import ASMLP, ASMLPBlock, AxialShiftMixer, ChannelMLP, PatchEmbed, PatchMerging

__all__ = ['ASMLP', 'ASMLPBlock', 'AxialShiftMixer', 'ChannelMLP', 'PatchEmbed',
           'PatchMerging']
