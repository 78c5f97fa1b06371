"""xurdif's "tinyunet_with_attention3" (alt_models/tinyunet_with_attn3.py): one
FiLM-conditioned conv block per level, single-head attention at the bottleneck."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import channel_layer_norm, check_mults, sinusoidal_embedding


class FiLM(nn.Module):
    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, channels * 2))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class ConvBlock(nn.Module):
    """3x3 conv -> channel LayerNorm -> FiLM(time) -> SiLU; no residual path."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = FiLM(emb_dim, out_ch)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return F.silu(self.film(channel_layer_norm(self.conv(x)), emb))


class SelfAttention2d(nn.Module):
    """One head over all pixels, 1x1-conv q/k/v, no pre-norm; output proj(attn + x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape

        def tokens(conv: nn.Conv2d) -> torch.Tensor:  # [B, 1, HW, C]
            return conv(x).reshape(b, 1, c, h * w).transpose(2, 3)

        # SDPA's default scale 1/sqrt(C) is the original's; it avoids the HWxHW matrix.
        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return self.proj(out + x)


class TinyUNetWithAttention3(nn.Module):
    """xurdif's default network: one conv block per level, attention at the bottleneck.

    With dim=64 and dim_mults=[1, 2, 2, 2] it has 3.76 M parameters.
    """

    def __init__(self, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4), channels: int = 3,
                 out_dim: int | None = None):
        super().__init__()
        mults = check_mults("tinyunet_with_attention3", dim_mults)
        dims = [dim] + [dim * m for m in mults]
        emb_dim = dim * 4
        self.dim = dim
        self.init_conv = nn.Conv2d(channels, dim, 3, padding=1)
        self.time_mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.downs = nn.ModuleList(
            nn.ModuleList([ConvBlock(d_in, d_out, emb_dim), nn.Conv2d(d_out, d_out, 4, stride=2, padding=1)])
            for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        mid = dims[-1]
        self.mid_block1 = ConvBlock(mid, mid, emb_dim)
        self.mid_attn = SelfAttention2d(mid)
        self.mid_block2 = ConvBlock(mid, mid, emb_dim)

        # Level i is upsampled from level i+1's width and concatenated with skip i.
        self.ups = nn.ModuleList()
        for i in reversed(range(len(mults))):
            d_out, d_skip = dims[i], dims[i + 1]
            self.ups.append(nn.ModuleList([
                nn.ConvTranspose2d(mid, d_out, 4, stride=2, padding=1),
                ConvBlock(d_out + d_skip, d_out, emb_dim),
            ]))
            mid = d_out
        self.final_conv = nn.Conv2d(dim, out_dim or channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.dim))
        x = self.init_conv(x)
        skips = []
        for block, down in self.downs:
            x = block(x, emb)
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)
        for (up, block), skip in zip(self.ups, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1), emb)
        return self.final_conv(x)
