"""Layers that several legacy networks share. Attribute names are the originals'
(fn, norm, g, b, to_qkv, to_out, block, mlp, ...) because they become the
state-dict keys that a strict load of an old checkpoint has to find."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def check_mults(name: str, dim_mults: Sequence[int], first_is_one: bool = False) -> list[int]:
    mults = [int(m) for m in dim_mults]
    if not mults or any(m <= 0 for m in mults):
        raise ValueError(f"{name}: dim_mults must be a non-empty list of positive ints, got {dim_mults!r}")
    if first_is_one and mults[0] != 1:
        # The last up level ends at dim * mults[0] channels and the final conv takes dim:
        # the original could not run, so no checkpoint of it exists.
        raise ValueError(f"{name}: dim_mults must start with 1 (its final conv takes dim channels), got {mults}")
    return mults


def channel_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-pixel normalisation over channels, no affine (the originals' LayerNorm core)."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


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


class Rezero(nn.Module):
    """fn(x) scaled by a learned scalar g that starts at zero (unet0's attention gate)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.g = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) * self.g


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, heads*C, H, W] -> [B, heads, C, H*W]."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    """Linear attention (softmax of k over pixels, context = k·vᵀ).

    The urdiffusion networks differ in three places, kept as flags:
    unet1/unet2 softmax q over channels, scale it and LayerNorm the output;
    unet0 softmaxes q but neither scales nor norms; unetcn0 scales q without a softmax.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32, *, q_softmax: bool = True,
                 q_scale: bool = True, out_norm: bool = True):
        super().__init__()
        self.scale = dim_head ** -0.5 if q_scale else None
        self.q_softmax = q_softmax
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        out = nn.Conv2d(hidden, dim, 1)
        self.to_out = nn.Sequential(out, AffineLayerNorm(dim)) if out_norm else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        if self.q_softmax:
            q = q.softmax(dim=-2)
        if self.scale is not None:
            q = q * self.scale
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


class ConvNormAct(nn.Module):
    """3x3 conv -> GroupNorm -> activation, as one `block` Sequential (unet0, unet1)."""

    def __init__(self, dim: int, dim_out: int, groups: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class AddTimeResnetBlock(nn.Module):
    """Two ConvNormAct with the projected time embedding added between them (unet0,
    unet1); with time_emb_dim None it has no `mlp`, like unet1's final block."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None, groups: int,
                 act: Callable[[], nn.Module]):
        super().__init__()
        self.mlp = nn.Sequential(act(), nn.Linear(time_emb_dim, dim_out)) if time_emb_dim else None
        self.block1 = ConvNormAct(dim, dim_out, groups, act)
        self.block2 = ConvNormAct(dim_out, dim_out, groups, act)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block1(x)
        if self.mlp is not None:
            h = h + self.mlp(emb)[:, :, None, None]
        return self.block2(h) + self.res_conv(x)
