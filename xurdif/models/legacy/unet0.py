"""urdiffusion's "unet0" (alt_models/Unet0.py): one ResNet block per level with
Mish activations, rezero-gated linear attention everywhere, a time embedding of
width dim, and no stem conv (the first block takes the image itself)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import AddTimeResnetBlock, LinearAttention, Residual, Rezero, check_mults, sinusoidal_embedding
from .levels import LevelUNet


class Resample(nn.Module):
    """A conv kept under the attribute `conv`, where unet0's keys have it."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Unet0(LevelUNet):
    """With dim=64 and dim_mults=[1, 2] it has 1.47 M parameters."""

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 groups: int = 32):
        super().__init__()
        mults = check_mults("unet0", dim_mults, first_is_one=True)
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))

        def attn(d: int) -> nn.Module:
            return Residual(Rezero(LinearAttention(d, q_scale=False, out_norm=False)))

        self.build_levels(
            [channels] + [dim * m for m in mults], 1,
            block=lambda d_in, d_out, _first: AddTimeResnetBlock(d_in, d_out, dim, 8, nn.Mish),
            attn=attn, mid_attn=attn,
            down=lambda d: Resample(nn.Conv2d(d, d, 3, 2, 1)),
            up=lambda d: Resample(nn.ConvTranspose2d(d, d, 4, 2, 1)),
        )
        # `groups` (32) only applies here; the blocks' GroupNorms always have 8.
        self.final_conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.Mish(),
                                        nn.Conv2d(dim, channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.mlp(sinusoidal_embedding(t, self.dim))
        return self.final_conv(self.levels(x, emb))
