"""The U-Net layout urdiffusion's unet0, unet1 and unetcn0 share (adapted from
lucidrains' denoising-diffusion-pytorch): per level some time-conditioned blocks,
an attention layer and a resampler; skips taken after each down level's
attention; one up level fewer than down levels, so the top skip goes unused."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# block(d_in, d_out, first) -> a module called as block(x, emb); `first` marks
# the very first block of the network (unetcn0 leaves its input norm out).
BlockFactory = Callable[[int, int, bool], nn.Module]
Layer = Callable[[int], nn.Module]


class LevelUNet(nn.Module):
    def build_levels(self, dims: list[int], blocks_per_level: int, block: BlockFactory,
                     attn: Layer, mid_attn: Layer, down: Layer, up: Layer) -> None:
        """Register downs, mid_block1/mid_attn/mid_block2 and ups under the originals' names."""
        in_out = list(zip(dims[:-1], dims[1:]))
        last = len(in_out) - 1
        self.downs = nn.ModuleList(
            nn.ModuleList([
                block(d_in, d_out, i == 0),
                *(block(d_out, d_out, False) for _ in range(blocks_per_level - 1)),
                attn(d_out),
                down(d_out) if i < last else nn.Identity(),
            ])
            for i, (d_in, d_out) in enumerate(in_out)
        )
        # Registered before the middle blocks only so the key order matches the originals'.
        self.ups = nn.ModuleList()
        mid = dims[-1]
        self.mid_block1 = block(mid, mid, False)
        self.mid_attn = mid_attn(mid)
        self.mid_block2 = block(mid, mid, False)
        # Every up level upsamples: the originals' "is_last" test never held here.
        self.ups.extend(
            nn.ModuleList([
                block(d_out * 2, d_in, False),
                *(block(d_in, d_in, False) for _ in range(blocks_per_level - 1)),
                attn(d_in),
                up(d_in),
            ])
            for d_in, d_out in reversed(in_out[1:])
        )

    def levels(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skips = []
        for *blocks, attn, down in self.downs:
            for block in blocks:
                x = block(x, emb)
            x = attn(x)
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)
        for *blocks, attn, up in self.ups:
            x = torch.cat([x, skips.pop()], dim=1)
            for block in blocks:
                x = block(x, emb)
            x = up(attn(x))
        return x
