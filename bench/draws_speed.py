"""Time of a micro-batch's per-sample draws: the seeded host generator per sample that
training used first (noise drawn on the host, then copied to --device), against
xurdif/train/draws.py (timesteps and levels on the host; the noise on --device, by a generator
there seeded per sample ("device-noise-1"), and from integer counters ("counter-1", eager and,
with --compiled, through torch.compile as train.compile draws it)).

    python bench/draws_speed.py --sizes 64 128 256 --batch 64 --threads 2 [--compiled]
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
    ap.add_argument("--compiled", action="store_true", help="also the compiled counter draw (train.compile)")
    args = ap.parse_args(argv)
    import torch

    from xurdif.train import draws

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"batch {args.batch}, {args.threads} threads, device {dev}; best of {args.repeats}")
    print("| px | before: host draws + copy, ms | host draws ms | per-sample noise on the device ms "
          "| counter noise ms | compiled counter noise ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    positions = range(1000, 1000 + args.batch)
    compiled = draws.compiled_keyed_noise() if args.compiled else None
    for size in args.sizes:
        shape = (3, size, size)

        def before():
            eps = old_draws(0, positions, shape, 1000)[0]
            if dev.type == "cuda":
                eps.pin_memory().to(dev, non_blocking=True)
            sync()

        def timed(version, keyed=draws.keyed_noise):
            def run():
                draws.noise(0, positions, shape, dev, version, keyed)
                sync()
            run()  # warm-up (and compilation)
            return best_of(run, args.repeats)

        old = best_of(before, args.repeats)
        host = best_of(lambda: draws.timesteps_and_levels(0, positions, 1000), args.repeats)
        per_sample, counter = timed("device-noise-1"), timed("counter-1")
        fused = f"{timed('counter-1', compiled) * 1e3:.2f}" if compiled else "-"
        print(f"| {size} | {old * 1e3:.1f} | {host * 1e3:.2f} | {per_sample * 1e3:.2f} | {counter * 1e3:.2f} "
              f"| {fused} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
