"""urdiffusion's "unetcn0" (alt_models/UnetCN0.py): the U-Net of unet1 built
from ConvNeXt blocks instead of ResNet blocks, linear attention everywhere
(the bottleneck too), a time embedding of width dim and no stem conv."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import AffineLayerNorm, LinearAttention, PreNorm, Residual, SinusoidalPosEmb, check_mults
from .levels import LevelUNet


class ConvNextBlock(nn.Module):
    """Depthwise 7x7 conv, + time, then LayerNorm -> 1x1 up (x mult) -> GELU ->
    LayerNorm -> 1x1 down, plus a residual; `norm=False` drops the first LayerNorm
    (the network's first block, which sees the raw image)."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None = None, mult: int = 2,
                 norm: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(time_emb_dim, dim)) if time_emb_dim else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        hidden = dim_out * mult
        self.net = nn.Sequential(
            AffineLayerNorm(dim) if norm else nn.Identity(),
            nn.Conv2d(dim, hidden, 1), nn.GELU(), AffineLayerNorm(hidden), nn.Conv2d(hidden, dim_out, 1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ds_conv(x)
        if self.mlp is not None:
            h = h + self.mlp(emb)[:, :, None, None]
        return self.net(h) + self.res_conv(x)


class UnetCN0(LevelUNet):
    """With dim=64 and dim_mults=[1, 2] it has 0.81 M parameters."""

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 out_dim: int | None = None):
        super().__init__()
        mults = check_mults("unetcn0", dim_mults, first_is_one=True)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, dim * 4), nn.GELU(),
                                      nn.Linear(dim * 4, dim))

        def attn(d: int) -> nn.Module:
            return Residual(PreNorm(d, LinearAttention(d, q_softmax=False, out_norm=False)))

        self.build_levels(
            [channels] + [dim * m for m in mults], 2,
            block=lambda d_in, d_out, first: ConvNextBlock(d_in, d_out, dim, norm=not first),
            attn=attn, mid_attn=attn,
            down=lambda d: nn.Conv2d(d, d, 3, 2, 1),
            up=lambda d: nn.ConvTranspose2d(d, d, 4, 2, 1),
        )
        self.final_conv = nn.Sequential(ConvNextBlock(dim, dim), nn.Conv2d(dim, out_dim or channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.levels(x, self.time_mlp(t)))
