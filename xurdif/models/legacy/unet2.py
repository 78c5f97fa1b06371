"""urdiffusion's default "unet2" (alt_models/Unet2.py, lucidrains-style ResNet
U-Net): blocks condition on time by scale and shift after the GroupNorm."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import Attention, LinearAttention, PreNorm, Residual, SinusoidalPosEmb, check_mults


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class Unet2(nn.Module):
    """urdiffusion's default network: two ResNet blocks and linear attention per
    level, full attention at the bottleneck, a long skip from the stem.

    With dim=64 and dim_mults=[1, 1, 2, 2, 4, 4, 8, 8] it has 75.7 M parameters;
    the input side must then be a multiple of 128 (one halving per level but the last).
    """

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), channels: int = 3,
                 init_dim: int | None = None, out_dim: int | None = None, resnet_block_groups: int = 8,
                 learned_variance: bool = False):
        super().__init__()
        mults = check_mults("unet2", dim_mults)
        init_dim = init_dim or dim
        dims = [init_dim] + [dim * m for m in mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        emb_dim = dim * 4

        def resblock(d_in: int, d_out: int) -> ResnetBlock:
            return ResnetBlock(d_in, d_out, emb_dim, resnet_block_groups)

        def lin_attn(d: int) -> Residual:
            return Residual(PreNorm(d, LinearAttention(d)))

        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, emb_dim), nn.GELU(),
                                      nn.Linear(emb_dim, emb_dim))
        last = len(in_out) - 1
        self.downs = nn.ModuleList(
            nn.ModuleList([
                resblock(d_in, d_out), resblock(d_out, d_out), lin_attn(d_out),
                nn.Conv2d(d_out, d_out, 4, 2, 1) if i < last else nn.Identity(),
            ])
            for i, (d_in, d_out) in enumerate(in_out)
        )
        # Registered before the middle blocks only so the key order matches the original's.
        self.ups = nn.ModuleList()
        mid = dims[-1]
        self.mid_block1 = resblock(mid, mid)
        self.mid_attn = Residual(PreNorm(mid, Attention(mid)))
        self.mid_block2 = resblock(mid, mid)
        self.ups.extend(
            nn.ModuleList([
                resblock(d_out * 2, d_in), resblock(d_in, d_in), lin_attn(d_in),
                nn.ConvTranspose2d(d_in, d_in, 4, 2, 1) if i < last else nn.Identity(),
            ])
            for i, (d_in, d_out) in enumerate(reversed(in_out))
        )
        self.final_res_block = resblock(dim * 2, dim)
        self.final_conv = nn.Conv2d(dim, out_dim or channels * (2 if learned_variance else 1), 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.init_conv(x)
        stem = x
        emb = self.time_mlp(t)
        skips = []
        for block1, block2, attn, down in self.downs:
            x = attn(block2(block1(x, emb), emb))
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)
        for block1, block2, attn, up in self.ups:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(attn(block2(block1(x, emb), emb)))
        x = self.final_res_block(torch.cat([x, stem], dim=1), emb)
        return self.final_conv(x)
