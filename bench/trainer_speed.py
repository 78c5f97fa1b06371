"""Speed of the real training step (xurdif.train.loop.Trainer.step) per preset and size:
images/s, step time, peak device memory and model-FLOPs utilisation, eager,
compiled, compiled with CUDA graphs or with channels_last, fed by the real input
pipeline and by a synthetic batch already on the device.

    .venv/bin/python bench/train_speed.py --device cuda [--presets tiny small base large]
        [--sizes 64 128 256] [--modes eager compiled graphs compiled-cl] [--precision bf16] [--steps 10]
        [--warmup 3] [--batch N [N ...]] [--budget-s 600] [--json out.json]

Data: random-noise PNGs written once per size into a temporary folder (folder source,
cached uint8 in memory, random crop and flip), so "real" runs the whole input pipeline
of a training run: indices, augmentation, noise and timestep draws, host-to-device copies.
"synthetic" replaces Trainer.micro_batch by the first micro-batches, kept on the device:
real/synthetic is the share of the step the input pipeline costs.
MFU = 3 x forward FLOPs per image (FlopCounterMode; backward ~2x forward; activation
checkpointing's recompute not counted) x images/s / the device's dense bf16 peak.
Rows that fail (out of memory, a compiler error) print the error and the table goes on;
rows that would start after --budget-s are listed as skipped.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.models.unet import UNet, unet_config  # noqa: E402
from xurdif.recipe import DataCfg, LogCfg, ModelCfg, Recipe, SamplesCfg, TrainCfg, CheckpointCfg  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
# Checked in order: the first name fragment found in torch.cuda.get_device_name() wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM / HBM3
    ("H200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),  # bf16 with fp32 accumulate
)

# Per-process batch by resolution when --batch is not given: large enough to fill a big GPU.
DEFAULT_BATCH = {64: 64, 128: 32, 256: 16}


def bf16_peak_tflops(device_name: str) -> float | None:
    for fragment, tflops in BF16_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


def forward_gflops(preset: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = UNet(**unet_config(preset))
    x = torch.empty(1, 3, size, size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t)
    return counter.get_total_flops() / 1e9


def noise_folder(root: Path, size: int, n: int = 64) -> Path:
    folder = root / f"noise-{size}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


# --modes: the speed switches of each row. "graphs": torch.compile's CUDA-graph mode (cudagraph
# trees replay the network's forward and backward: no per-kernel launches for the small presets).
MODES = {"eager": {"compile": False, "channels_last": False},
         "compiled": {"compile": True, "channels_last": False},
         "graphs": {"compile": "reduce-overhead", "channels_last": False},
         "compiled-cl": {"compile": True, "channels_last": True}}


def bench_recipe(preset: str, size: int, batch: int, precision: str, mode: str, data: Path,
                 out: Path, checkpointing: bool | list[int], workers: int = 0) -> Recipe:
    return Recipe(
        name="bench",
        data=DataCfg(path=str(data), size=size, crop="random", hflip=True, num_workers=workers),
        model=ModelCfg(preset=preset),
        train=TrainCfg(batch_size=batch, steps=10**9, mixed_precision=precision, **MODES[mode],
                       activation_checkpointing=checkpointing, output_dir=str(out)),
        log=LogCfg(every_steps=10**9, tensorboard=False),
        samples=SamplesCfg(every_steps=0),
        checkpoint=CheckpointCfg(every_steps=10**9),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer, steps: int) -> float:
    device = trainer.acc.device
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def measure(recipe: Recipe, steps: int, warmup: int) -> dict:
    """One Trainer; warm-up (compilation), timed real steps, then timed synthetic steps."""
    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    acc = make_accelerator(recipe)
    trainer = Trainer(recipe, acc, RunOutputs(recipe, recipe.run_dir, acc.is_main_process))
    device = acc.device
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.step()
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    real = time_steps(trainer, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    # The same step with its inputs already on the device: no data, draws or copies.
    batches = [trainer.micro_batch(k) for k in range(recipe.train.grad_accum)]
    trainer.micro_batch = lambda k: batches[k]
    trainer.step()
    synthetic = time_steps(trainer, steps)
    del trainer
    return {"warmup_s": warm_s, "step_s": real, "synthetic_step_s": synthetic, "peak_gib": peak}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # each compiled row starts from a clean compiler cache


def table_row(row: dict, args: argparse.Namespace, tmp: Path, device: torch.device, peak: float | None) -> str:
    """Measure one (preset, size, batch, mode) into `row`; its Markdown line, or the error's."""
    preset, size, batch, mode = row["preset"], row["size"], row["batch"], row["mode"]
    recipe = bench_recipe(preset, size, batch, args.precision, mode, noise_folder(tmp, size),
                          tmp / f"run-{preset}-{size}-{batch}-{mode}", args.checkpointing, args.workers)
    try:
        row.update(measure(recipe, args.steps, args.warmup))
    except Exception as e:  # OOM, compiler errors: report the row, keep going
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if args.verbose:
            traceback.print_exc()
        return f"| {preset} | {size} | {batch} | {mode} | error: {row['error']} |"
    finally:
        free(device)
    gflops = forward_gflops(preset, size)
    ips, syn = batch / row["step_s"], batch / row["synthetic_step_s"]
    mfu = 3 * gflops * 1e9 * ips / (peak * 1e12) if peak else None
    row.update(images_per_s=ips, synthetic_images_per_s=syn, gflop_fwd=gflops, mfu=mfu)
    return (f"| {preset} | {size} | {batch} | {mode} | {ips:.1f} | {1e3 * row['step_s']:.1f} "
            f"| {syn:.1f} | {ips / syn:.3f} | {row['peak_gib']:.2f} | {gflops:.2f} "
            f"| {f'{100 * mfu:.1f} %' if mfu is not None else 'n/a'} | {row['warmup_s']:.1f} |")


def run_table(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak_tflops(name) if device.type == "cuda" else None
    print(f"device: {name}; dense bf16 peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (no MFU)'}; "
          f"torch {torch.__version__}; precision {args.precision}", flush=True)
    rows: list[dict] = []
    start = time.perf_counter()
    lines = [f"{name}, {args.precision}, torch {torch.__version__}",
             "| preset | px | batch | mode | images/s | step ms | synthetic images/s | real/synthetic "
             "| peak GiB | GFLOP/img fwd | MFU | warm-up s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def emit(line: str) -> None:
        # Also into --table after every row: a run cut short keeps what it measured.
        lines.append(line)
        print(line, flush=True)
        if args.table:
            Path(args.table).write_text("\n".join(lines) + "\n")

    for line in lines[1:]:
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="xurdif-bench-") as tmp:
        tmp = Path(tmp)
        for mode in args.modes:
            for preset in args.presets:
                for size in args.sizes:
                    for batch in args.batch or [DEFAULT_BATCH.get(size, 16)]:
                        row = {"preset": preset, "size": size, "batch": batch, "mode": mode, "device": name}
                        rows.append(row)
                        if time.perf_counter() - start > args.budget_s:
                            row["error"] = f"skipped: --budget-s {args.budget_s} spent"
                            emit(f"| {preset} | {size} | {batch} | {mode} | {row['error']} |")
                            continue
                        emit(table_row(row, args, tmp, device, peak))
                        if args.json:
                            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("real training step (--device cuda, or --device cpu --trainer)")
    g.add_argument("--presets", nargs="+", default=["tiny", "small", "base", "large"])
    g.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    g.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=list(MODES),
                   help="eager; compiled (train.compile: true); graphs (train.compile: reduce-overhead); "
                        "compiled-cl (compiled + train.channels_last)")
    g.add_argument("--precision", default="bf16", choices=["no", "fp16", "bf16"])
    g.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, cudnn.benchmark)")
    g.add_argument("--checkpointing", type=json.loads, default=False, metavar="JSON",
                   help="train.activation_checkpointing for every row, e.g. true or [0,1]")
    g.add_argument("--workers", type=int, default=0,
                   help="data.num_workers of the real pipeline (loader processes that decode, crop and draw ahead)")
    g.add_argument("--budget-s", type=float, default=float("inf"), help="start no row after this many seconds")
    g.add_argument("--json", default="", help="also write the rows as JSON to this file")
    g.add_argument("--table", default="", help="also write the Markdown table to this file")
    g.add_argument("--verbose", action="store_true", help="print tracebacks of failing rows")
