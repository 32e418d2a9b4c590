"""A re-statement of the authors' released AS-MLP, in their parameter layout.

Not used by our models. It exists to check ours against: the tests map its keys
(``patch_embed.*``, ``layers.{i}.blocks.{j}.axial_shift.conv2_1.*``, ``layers.{i}.downsample.*``,
``norm.*``, ``head.*``) to ours with :mod:`asmlp_mm.models.weights` and compare outputs, and
the benchmark uses it as the "published way" baseline. Its shift is the released CPU path:
pad, chunk, roll, concatenate, narrow. Only zero padding and dilation 1 exist there.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def roll_shift(x: torch.Tensor, dim: int, shift_size: int) -> torch.Tensor:
    """The released shift: zero-pad, roll each channel chunk, concatenate, crop."""
    pad = shift_size // 2
    height, width = x.shape[2:]
    x = F.pad(x, (pad, pad, pad, pad))
    chunks = torch.chunk(x, shift_size, 1)
    rolled = [torch.roll(c, s, dim) for c, s in zip(chunks, range(-pad, pad + 1))]
    x = torch.cat(rolled, 1)
    return torch.narrow(torch.narrow(x, 2, pad, height), 3, pad, width)


def group_norm(channels):
    return nn.GroupNorm(1, channels)


class PublishedAxialShift(nn.Module):

    def __init__(self, dim, shift_size):
        super().__init__()
        self.shift_size = shift_size
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2_1 = nn.Conv2d(dim, dim, 1)
        self.conv2_2 = nn.Conv2d(dim, dim, 1)
        self.conv3 = nn.Conv2d(dim, dim, 1)
        self.norm1 = group_norm(dim)
        self.norm2 = group_norm(dim)
        self.actn = nn.GELU()

    def forward(self, x):
        x = self.actn(self.norm1(self.conv1(x)))
        x_lr = self.actn(self.conv2_1(roll_shift(x, 3, self.shift_size)))
        x_td = self.actn(self.conv2_2(roll_shift(x, 2, self.shift_size)))
        return self.conv3(self.norm2(x_lr + x_td))


class PublishedMlp(nn.Module):

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PublishedBlock(nn.Module):

    def __init__(self, dim, shift_size, mlp_ratio):
        super().__init__()
        self.norm1 = group_norm(dim)
        self.axial_shift = PublishedAxialShift(dim, shift_size)
        self.norm2 = group_norm(dim)
        self.mlp = PublishedMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.axial_shift(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PublishedPatchMerging(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.norm = group_norm(4 * dim)
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)

    def forward(self, x):
        if x.shape[2] % 2 or x.shape[3] % 2:
            x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                       x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], 1)
        return self.reduction(self.norm(x))


class PublishedLayer(nn.Module):

    def __init__(self, dim, depth, shift_size, mlp_ratio, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(
            [PublishedBlock(dim, shift_size, mlp_ratio) for _ in range(depth)])
        self.downsample = PublishedPatchMerging(dim) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class PublishedPatchEmbed(nn.Module):

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = group_norm(embed_dim)

    def forward(self, x):
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        return self.norm(self.proj(x))


class PublishedASMLP(nn.Module):
    """The released classifier (``out_indices=None``) or detection/segmentation backbone
    (``out_indices`` given: per-stage features through ``norm{i}``, no ``norm``/``head``).

    Args:
        embed_dim (int): Channels of stage 1. Defaults to 96.
        depths (Sequence[int]): Blocks per stage. Defaults to (2, 2, 6, 2) (AS-MLP-T).
        shift_size (int): Channel groups of the shift. Defaults to 5.
        mlp_ratio (float): MLP hidden width ratio. Defaults to 4.
        patch_size (int): Patch size of the embedding. Defaults to 4.
        in_chans (int): Input channels. Defaults to 3.
        num_classes (int): Classes of the head (classifier only). Defaults to 1000.
        out_indices (Sequence[int], optional): Stages to output; None builds the
            classifier. Defaults to None.
    """

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 shift_size: int = 5, mlp_ratio: float = 4., patch_size: int = 4,
                 in_chans: int = 3, num_classes: int = 1000, out_indices=None):
        super().__init__()
        self.out_indices = out_indices
        self.patch_embed = PublishedPatchEmbed(patch_size, in_chans, embed_dim)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList([
            PublishedLayer(dims[i], depth, shift_size, mlp_ratio, i < len(depths) - 1)
            for i, depth in enumerate(depths)
        ])
        if out_indices is None:
            self.norm = group_norm(dims[-1])
            self.head = nn.Linear(dims[-1], num_classes)
        else:
            for i in out_indices:
                self.add_module(f'norm{i}', group_norm(dims[i]))

    def forward(self, x):
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.out_indices is not None and i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
            if layer.downsample is not None:
                x = layer.downsample(x)
        if self.out_indices is not None:
            return tuple(outs)
        return self.head(self.norm(x).mean((2, 3)))
