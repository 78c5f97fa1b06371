"""Time of a micro-batch's per-sample draws: the seeded host generator per sample that
training used before (noise drawn on the host, then copied to --device), against
xurdif/train/draws.py (timesteps and levels on the host, the noise drawn on --device by a
generator there, seeded per sample).

    python bench/draws_speed.py --sizes 64 128 256 --batch 64 --threads 2
"""
from __future__ import annotations

import argparse
import time


def old_draws(seed: int, positions: range, shape: tuple[int, ...], T: int):
    """The draws as they were before the noise moved to the device (commit 48610ea)."""
    import torch  # imported by main() already: no cost inside the timed call

    from xurdif.seeds import derive_seed

    eps, ts, levels = [], [], []
    for p in positions:
        g = torch.Generator().manual_seed(derive_seed(seed, "noise", p))
        ts.append(torch.randint(0, T, (1,), generator=g))
        eps.append(torch.randn(shape, generator=g))
        levels.append(torch.randn(1, generator=g))
    return torch.stack(eps), torch.cat(ts), torch.cat(levels)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="where the training noise is drawn (cpu, cuda)")
    args = ap.parse_args(argv)
    import torch

    from xurdif.train import draws

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"batch {args.batch}, {args.threads} threads, device {dev}; best of {args.repeats}")
    print("| px | before: host draws + copy, ms | now: host draws ms | now: noise on the device ms | before / now |")
    print("|---:|---:|---:|---:|---:|")
    positions = range(1000, 1000 + args.batch)
    for size in args.sizes:
        shape = (3, size, size)

        def before():
            eps = old_draws(0, positions, shape, 1000)[0]
            if dev.type == "cuda":
                eps.pin_memory().to(dev, non_blocking=True)
            sync()

        def noise():
            draws.noise(0, positions, shape, dev)
            sync()

        old = best_of(before, args.repeats)
        host = best_of(lambda: draws.timesteps_and_levels(0, positions, 1000), args.repeats)
        noise()
        on_dev = best_of(noise, args.repeats)
        print(f"| {size} | {old * 1e3:.1f} | {host * 1e3:.2f} | {on_dev * 1e3:.1f} | {old / (host + on_dev):.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
