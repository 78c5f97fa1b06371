"""urdiffusion's "unet1" (alt_models/Unet1.py): a 7x7 stem to 2/3 of dim, two
ResNet blocks per level that add the time embedding, pre-normed linear attention
per level and full attention at the bottleneck."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import (AddTimeResnetBlock, Attention, LinearAttention, PreNorm, Residual, SinusoidalPosEmb,
                     check_mults)
from .levels import LevelUNet


class Unet1(LevelUNet):
    """With dim=64 and dim_mults=[1, 2] it has 2.22 M parameters."""

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 init_dim: int | None = None, out_dim: int | None = None, resnet_block_groups: int = 8):
        super().__init__()
        mults = check_mults("unet1", dim_mults, first_is_one=True)
        init_dim = init_dim or dim // 3 * 2
        emb_dim = dim * 4
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, emb_dim), nn.GELU(),
                                      nn.Linear(emb_dim, emb_dim))

        def resblock(d_in: int, d_out: int, time_dim: int | None = emb_dim) -> nn.Module:
            return AddTimeResnetBlock(d_in, d_out, time_dim, resnet_block_groups, nn.SiLU)

        self.build_levels(
            [init_dim] + [dim * m for m in mults], 2,
            block=lambda d_in, d_out, _first: resblock(d_in, d_out),
            attn=lambda d: Residual(PreNorm(d, LinearAttention(d))),
            mid_attn=lambda d: Residual(PreNorm(d, Attention(d))),
            down=lambda d: nn.Conv2d(d, d, 4, 2, 1),
            up=lambda d: nn.ConvTranspose2d(d, d, 4, 2, 1),
        )
        self.final_conv = nn.Sequential(resblock(dim, dim, None), nn.Conv2d(dim, out_dim or channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(t)
        return self.final_conv(self.levels(self.init_conv(x), emb))
