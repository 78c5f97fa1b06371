"""Time and disk of one checkpoint save and one resume (load + validate) per preset.

    .venv/bin/python bench/checkpoint_speed.py --presets small base
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from xurdif.models.unet import UNet, unet_config
from xurdif.train.checkpoint import load_checkpoint, save_checkpoint
from xurdif.train.ema import make_ema


def measure(preset: str, root: Path) -> dict:
    net = UNet(**unet_config(preset))
    ema = make_ema(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for p in net.parameters():  # one step so that the optimizer has its moment buffers
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    state = {"step": 1, "images_seen": 16, "global_batch": 16, "world_size": 1, "recipe_hash": "bench"}
    t0 = time.perf_counter()
    path = save_checkpoint(root, state, net.state_dict(), ema.state_dict(), opt.state_dict())
    save_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in path.iterdir())
    t0 = time.perf_counter()
    ck = load_checkpoint(path)  # validates sha256 of every file, then reads
    net.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["optimizer"])
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    return {"preset": preset, "params": params, "save_s": save_s, "resume_s": load_s, "mb": size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "base"])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp folder; use the disk you train on)")
    args = ap.parse_args()
    print("| preset | parameters | save (s) | resume (s) | disk (MB) |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        root = Path(tempfile.mkdtemp(dir=args.dir))
        try:
            r = measure(preset, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['save_s']:.2f} | {r['resume_s']:.2f} | {r['mb']:.1f} |")


if __name__ == "__main__":
    main()
