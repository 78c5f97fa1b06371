"""Parameter count and forward GFLOPs per image of each U-Net preset, as a Markdown table.

    .venv/bin/python bench/model_cost.py [--sizes 64 128 256]

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-add;
convolutions, matmuls and attention; norms and activations are not counted). The
network runs on the meta device, so even "large" at 256 px costs no memory or time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.models.unet import PRESETS, UNet, unet_config  # noqa: E402


def forward_gflops(net: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs for one size x size RGB image."""
    x = torch.empty(1, 3, size, size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t)
    return counter.get_total_flops() / 1e9


def cost_table(sizes: list[int]) -> str:
    head = "| preset | config | params (M) | " + " | ".join(f"GFLOP @{s}px" for s in sizes) + " |"
    rows = [head, "|---|---|---:|" + "---:|" * len(sizes)]
    for name in PRESETS:
        config = unet_config(name)
        with torch.device("meta"):
            net = UNet(**config)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        shown = ", ".join(f"{k}={v}" for k, v in config.items()).replace(" ", "")
        flops = " | ".join(f"{forward_gflops(net, s):.2f}" for s in sizes)
        rows.append(f"| {name} | `{shown}` | {params:.2f} | {flops} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    print(cost_table(p.parse_args().sizes))


if __name__ == "__main__":
    main()
