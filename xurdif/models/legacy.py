"""Networks of xurdif (2025) and urdiffusion (2023), re-implemented so their
checkpoints load strictly: module and attribute names reproduce the originals'
state-dict keys and shapes exactly, and the forward passes do the same math.

Both take (x, t) with x in [-0.5, 0.5] (their training range) and t the integer
timestep 0..T-1, unscaled, exactly as the originals receive it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The originals' embedding: [sin | cos] of t times 10000^(-i/(half-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class SinusoidalPosEmb(nn.Module):
    # A module (not a function) because urdiffusion puts it inside time_mlp,
    # which fixes the indices of the Linear layers in the state dict.
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim)


def _check_mults(name: str, dim_mults: Sequence[int]) -> list[int]:
    mults = [int(m) for m in dim_mults]
    if not mults or any(m <= 0 for m in mults):
        raise ValueError(f"{name}: dim_mults must be a non-empty list of positive ints, got {dim_mults!r}")
    return mults


# ---------------------------------------------------------------------------
# xurdif: "tinyunet_with_attention3" (alt_models/tinyunet_with_attn3.py)
# ---------------------------------------------------------------------------

def channel_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-pixel normalisation over channels, no affine (the original's LayerNorm)."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


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
        mults = _check_mults("tinyunet_with_attention3", dim_mults)
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


# ---------------------------------------------------------------------------
# urdiffusion: "unet2" (alt_models/Unet2.py, lucidrains-style ResNet U-Net)
# ---------------------------------------------------------------------------

class AffineLayerNorm(nn.Module):
    """Channel LayerNorm with per-channel gain g and bias b (names from the original)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.eps) * self.g + self.b


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class PreNorm(nn.Module):
    def __init__(self, channels: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = AffineLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


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


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, heads*C, H, W] -> [B, heads, C, H*W]."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), AffineLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads).transpose(2, 3) for t in self.to_qkv(x).chunk(3, dim=1))
        # scale = dim_head^-0.5, SDPA's default for these [B, heads, HW, dim_head] tensors
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, dim_head]
        return self.to_out(out.transpose(2, 3).reshape(b, -1, h, w))


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
        mults = _check_mults("unet2", dim_mults)
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
