"""xurdif's own lightweight U-Net and its size presets.

Residual conv blocks (GroupNorm, scale-shift time conditioning), self-attention
through scaled_dot_product_attention at the coarse levels, concatenated skips,
parameter-free resampling (2x2 average pool down, nearest up: the FLOPs go to
the 3x3 convs, which run at the highest fraction of peak on CPU).
Built from JSON-able keyword arguments, because the config is stored in the
model file's metadata and rebuilt with `UNet(**config)`.

Any input size works: the input is replicate-padded at the bottom/right up to a
multiple of patch_size * 2^(len(mults) - 1) and the output cropped back.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PRESETS: dict[str, dict] = {
    # CPU sizes fold 2x2 pixels into channels first (patch_size 2): convs with many
    # channels at half resolution train ~1.25x faster per FLOP on CPU than narrow
    # full-resolution ones (bench/train_speed.py, docs/benchmarks.md).
    # 0.59 GFLOP per 64 px image: learns emoji shapes on 2 CPU cores in minutes.
    "tiny": {"base_width": 48, "mults": [1, 2, 2, 2], "blocks_per_level": 1, "patch_size": 2},
    # 2.08 GFLOP per 64 px image, the cost of xurdif's own 3.76 M network.
    "small": {"base_width": 88, "mults": [1, 2, 2, 3], "blocks_per_level": 1, "patch_size": 2},
    # GPU sizes: full-resolution convs, two blocks per level.
    "base": {"base_width": 96, "mults": [1, 2, 2, 4], "blocks_per_level": 2},
    "large": {"base_width": 128, "mults": [1, 2, 2, 4, 4], "blocks_per_level": 2},
}


def unet_config(preset: str, **overrides) -> dict:
    """A preset's config with the non-None overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; valid: {', '.join(PRESETS)}")
    config = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in PRESETS[preset].items()}
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    # Sinusoids of the raw integer timestep (0..T-1), frequencies 1 .. 1/10000.
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # A zero last conv makes every block start as the identity: stable early training.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, scale_shift: torch.Tensor) -> torch.Tensor:
        """scale_shift: self.emb of the time embedding, [N, 2 * cout] (the U-Net computes every
        block's at once: UNet.time_projections)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = scale_shift[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale))
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        # About head_dim channels per head, but the heads must split the channels evenly.
        self.heads = next(h for h in range(max(1, channels // head_dim), 0, -1) if channels % h == 0)
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # Tokens-major throughout: the 1x1 convs run as matmuls on [n, h*w, c], so q, k
        # and v reach the kernel with head_dim contiguous (stride 1), which the flash and
        # memory-efficient kernels require; a channels-first layout (stride h*w) would
        # fall back to the kernel that materialises every (h*w)^2 score.
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [n, hw, c]
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)
        q, k, v = qkv.view(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [n, heads, hw, head_dim]
        out = F.linear(out.transpose(1, 2).reshape(n, h * w, c), self.proj.weight.flatten(1), self.proj.bias)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


def _block_attn(blk: ResBlock, att: nn.Module, x: torch.Tensor, scale_shift: torch.Tensor) -> torch.Tensor:
    return att(blk(x, scale_shift))


def _mid(net: "UNet", x: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return net.mid2(net.mid_attn(net.mid1(x, first)), second)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_width: int = 64,
        mults: Sequence[int] = (1, 2, 2, 2),
        blocks_per_level: int = 1,
        attn_levels: Sequence[int] | None = None,
        head_dim: int = 32,
        dropout: float = 0.0,
        norm_groups: int = 32,
        emb_dim: int | None = None,
        patch_size: int = 1,
        aug_dim: int = 0,
    ):
        super().__init__()
        levels = len(mults)
        if attn_levels is None:
            attn_levels = [i for i in range(levels) if i >= levels - 2]
        self.attn_levels = sorted(set(attn_levels))
        if any(not 0 <= i < levels for i in self.attn_levels):
            raise ValueError(f"attn_levels {list(attn_levels)} out of range for {levels} levels")
        # patch_size 2 folds 2x2 pixels into channels first (pixel_unshuffle): every conv
        # then runs at half resolution with more channels, which a CPU runs far faster.
        self.patch = patch_size
        self.levels, self.factor = levels, patch_size * 2 ** (levels - 1)
        self.base_width = base_width
        emb_dim = emb_dim or 4 * base_width
        self.time_mlp = nn.Sequential(
            nn.Linear(base_width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )
        # Non-leaky augmentation: the augmentation's parameters condition the network
        # like the time does (EDM's augment_dim); zeros, the default, mean "not augmented".
        self.aug_dim = aug_dim
        self.aug_map = nn.Linear(aug_dim, base_width, bias=False) if aug_dim else None
        widths = [int(base_width * m) for m in mults]
        self.stem = nn.Conv2d(in_channels * patch_size**2, widths[0], 3, padding=1)

        ch = self._build_blocks(widths, blocks_per_level, emb_dim, norm_groups, dropout, head_dim)
        self.out_norm = group_norm(ch, norm_groups)
        self.out = nn.Conv2d(ch, out_channels * patch_size**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.blocks_per_level = blocks_per_level

    def _build_blocks(self, widths: list[int], blocks_per_level: int, emb_dim: int, norm_groups: int,
                      dropout: float, head_dim: int) -> int:
        """The down, middle and up blocks, in this order (the order random initialisation
        draws in); returns the last block's width."""
        levels = len(widths)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, norm_groups, dropout)

        def attn(level: int, ch: int) -> nn.Module:
            return Attention(ch, head_dim, norm_groups) if level in self.attn_levels else nn.Identity()

        self.down, self.down_attn = nn.ModuleList(), nn.ModuleList()
        # The U-Net level of every down, mid and up block (for activation checkpointing).
        self.down_levels = [i for i in range(levels) for _ in range(blocks_per_level)]
        self.up_levels = [i for i in reversed(range(levels)) for _ in range(blocks_per_level)]
        self.checkpoint_levels: frozenset[int] = frozenset()
        skips, ch = [], widths[0]
        for i, w in enumerate(widths):
            for _ in range(blocks_per_level):
                self.down.append(block(ch, w))
                self.down_attn.append(attn(i, w))
                ch = w
                skips.append(ch)
        self.mid1, self.mid_attn, self.mid2 = block(ch, ch), attn(levels - 1, ch), block(ch, ch)

        self.up, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(levels)):
            w = widths[i]
            for _ in range(blocks_per_level):
                self.up.append(block(ch + skips.pop(), w))
                self.up_attn.append(attn(i, w))
                ch = w
        return ch

    def set_checkpointing(self, levels: bool | Sequence[int]) -> None:
        """Recompute the activations of these levels' blocks in the backward pass instead
        of storing them (True: every level, False: none). Not part of the model's config:
        it changes memory and time, never the result."""
        if isinstance(levels, bool):
            levels = range(self.levels) if levels else []
        bad = [i for i in levels if not 0 <= i < self.levels]
        if bad:
            raise ValueError(f"activation checkpointing levels {bad} out of range: this U-Net has "
                             f"levels 0..{self.levels - 1}")
        self.checkpoint_levels = frozenset(levels)

    def _run(self, level: int, fn, *args: torch.Tensor) -> torch.Tensor:
        if level in self.checkpoint_levels and self.training and torch.is_grad_enabled():
            # Non-reentrant: works with torch.compile and restores the dropout RNG state.
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def time_projections(self, emb: torch.Tensor) -> list[torch.Tensor]:
        """Every block's scale and shift from the time embedding (down, mid, up order), as one
        matmul over the blocks' weights side by side: one kernel launch where there was one per
        block (a small preset's step is launch-bound on a GPU; docs/benchmarks.md). The weights
        stay in each block's own Linear, so model files keep their keys."""
        blocks = [*self.down, self.mid1, self.mid2, *self.up]
        weight = torch.cat([b.emb.weight for b in blocks])
        bias = torch.cat([b.emb.bias for b in blocks])
        return list(F.linear(emb, weight, bias).split([b.emb.out_features for b in blocks], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        # Any size works: pad up to a multiple of the total downsampling, crop back.
        ph, pw = -h % self.factor, -w % self.factor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        emb = timestep_embedding(t.reshape(-1).expand(n), self.base_width)
        if self.aug_map is not None and aug is not None:
            emb = emb + self.aug_map(aug.to(emb.dtype))
        proj = iter(self.time_projections(self.time_mlp(emb)))

        hs, b = [], self.blocks_per_level
        x = self.stem(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        for j, (blk, att) in enumerate(zip(self.down, self.down_attn)):
            x = self._run(self.down_levels[j], _block_attn, blk, att, x, next(proj))
            hs.append(x)
            if j % b == b - 1 and j // b < self.levels - 1:
                x = F.avg_pool2d(x, 2)
        x = self._run(self.levels - 1, _mid, self, x, next(proj), next(proj))
        for j, (blk, att) in enumerate(zip(self.up, self.up_attn)):
            x = self._run(self.up_levels[j], _block_attn, blk, att, torch.cat([x, hs.pop()], dim=1), next(proj))
            if j % b == b - 1 and j // b < self.levels - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.out(F.silu(self.out_norm(x)))
        x = F.pixel_shuffle(x, self.patch) if self.patch > 1 else x
        return x[:, :, :h, :w]
