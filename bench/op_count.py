"""Count the aten operations one ordinary training step dispatches (xurdif.train.loop.Trainer.step).

Every aten operation is at least one kernel launch on a GPU, so this count, taken on the CPU,
says how launch-bound a small network's step is there: at 64 px and batch 4 a tiny U-Net's
kernels take microseconds each, and the step's time is the number of launches times the
launch cost. The count does not depend on the device (the same Python code dispatches the
same operations), so the CPU measures what a GPU would launch.

    .venv/bin/python bench/op_count.py [--presets tiny small base] [--size 64] [--batch 4]
        [--warmup 3] [--top 12] [--detail] [--recipe recipes/small-data.yaml] [--set key=value ...] [--json out.json]
        [--profile] [--compile [MODE]]

What runs: a real Trainer built from the recipe (by default recipes/small-data.yaml: x0
prediction, edge-L1 1.0 + SSIM 0.2, augment.p 0.5, batch 4) on the test fixture's 32
emoji (tests/fixtures/emoji-faces-32, resized to --size), with only the preset, size, batch
and step count changed; --warmup ordinary steps first (lazy initialisation, the optimizer's
state), then one step counted under a TorchDispatchMode, which sees every aten operation
the step dispatches, forward, backward (autograd's engine runs under the mode too) and
optimizer alike. --compile counts a step with train.compile instead: its forward with the loss
and its backward are graphs inductor compiled (minutes of compiling per preset on this CPU),
so the count comes from torch.profiler's record (--profile: the same for an eager step; in
eager mode both ways agree within 1 % on kernels, tests/test_op_count.py), each generated
kernel one operation. Inductor's CPU kernels stand in for the Triton kernels a GPU would
launch: the fusion is the same graph's; the grouping of a few kernels may differ.

The table per preset: the total and where the operations come from, by the part of the step
that dispatched them:
  host        operations on host tensors: the per-sample draws (timesteps, levels, augmentation
              parameters), the data loader's crops and flips, the augmentation's matrices;
              on a GPU they run on the CPU and launch nothing there
  batch       the rest of the micro-batch: images to the device, the augmentation's warp
  noise       draws.noise (the batch's N(0, 1) noise)
  net fwd     the network's forward (Model.denoise)
  loss        the loss terms (xurdif.diffusion.losses.loss_terms: edge-L1, SSIM, ...) and
              the prediction maps around them (Loss.__call__ outside the network)
  net fwd+loss  with train.compile (one process): the two above, one compiled graph
  backward    autograd through network and loss (compiled: the graph's backward)
  clip        the gradient norm and clipping (accelerate's clip_grad_norm_)
  optimizer   AdamW's step and zero_grad
  ema         the EMA update (Model.update_emas)
  other       the rest of Trainer.step (statistics, learning rate, non-finite counter)
and the most frequent operation names. "kernels" leaves out the views (detach, view, t,
transpose, select, ...: operations whose schema says they alias their input, and a few
splits), which make a tensor header and launch nothing on a GPU; the issue's count is "ops",
all of them. The first line adds what a GPU would launch: the kernels less the host part,
and the same with train.compile: reduce-overhead, where net fwd, loss and backward are two
CUDA-graph replays and the noise one kernel (derived from the eager count: whether the
graphs capture is tested on a GPU, tests/test_cuda.py). --json writes the same numbers.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("host", "batch", "noise", "net fwd", "loss", "net fwd+loss", "backward", "clip", "optimizer", "ema",
         "other")
# Operations that only make a new tensor header over the same memory (besides those whose schema
# says they alias their input, func.is_view): a GPU launches no kernel for them.
# The optimizer's record_function markers (profiler ranges) launch nothing either.
METADATA = {"_unsafe_view", "split", "unbind", "split_with_sizes", "chunk", "_reshape_alias",
            "_record_function_enter_new", "_record_function_exit"}
FIXTURE = ROOT / "tests" / "fixtures" / "emoji-faces-32"


class Counts:
    """Operations by (part of the step, operation name). `part` is set by the wrappers that
    `instrument` puts around the step's pieces."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.views: set[str] = set()  # names of the views among them (no kernel on a GPU)
        self.part = "other"

    def add(self, part: str, name: str, view: bool) -> None:
        self.ops[(part, name)] += 1
        if view or name in METADATA:
            self.views.add(name)

    @contextlib.contextmanager
    def within(self, part: str):
        before, self.part = self.part, part
        try:
            yield
        finally:
            self.part = before

    def wrap(self, fn, part: str):
        def wrapped(*args, **kwargs):
            with self.within(part):
                return fn(*args, **kwargs)
        return wrapped

    def total(self, part: str | None = None, kernels: bool = False) -> int:
        """Operations of `part` (None: all); kernels: without views (no kernel on a GPU)."""
        return sum(n for (p, name), n in self.ops.items()
                   if (part is None or p == part) and not (kernels and name in self.views))

    def names(self, part: str | None = None) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for (p, name), n in self.ops.items():
            if part is None or p == part:
                c[name] += n
        return c


class OpCounter(Counts, TorchDispatchMode):
    """Counts the aten operations dispatched while it is active (a TorchDispatchMode: it sees
    what reaches the backends, after autograd and composite operations decomposed)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        self.add(self.part, name, getattr(func, "is_view", False))
        return func(*args, **(kwargs or {}))


class ProfiledCounter(Counts):
    """The same count from torch.profiler's record of the step, which also sees a compiled
    graph's kernels (a TorchDispatchMode would make dynamo run the graph's operations one by
    one). Each aten event counts as the dispatch mode would count it: a composite operation
    (aten::to, linear, matmul, group_norm...) by the operations it runs, the others once with
    whatever they call inside; each kernel inductor generated counts as one operation
    ("compiled kernel"; torch._inductor.config.cpp.enable_kernel_profile names them on the CPU).
    Parts are record_function ranges."""

    def within(self, part: str):
        return torch.profiler.record_function(f"part:{part}")

    def __enter__(self):
        self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.profile.__enter__()
        return self

    def __exit__(self, *exc):
        self.profile.__exit__(*exc)
        for event in self.profile.events():
            if event.cpu_parent is None:
                self.collect(event, "other")
        return False

    def collect(self, event, part: str) -> None:
        name = event.name
        if name.startswith("part:"):
            part = name[5:]
        elif name.startswith("aten::"):
            op = name[6:]
            if not composite(op):
                self.add(part, op, no_kernel(op))
                return
            if not event.cpu_children:  # a composite that ran nothing (to() a tensor already so, dropout
                return                      # at p=0): the dispatch mode never sees it either
        elif "cpp_fused" in name or name.startswith("triton_"):
            self.add(part, "compiled kernel", False)
            return
        for child in event.cpu_children:
            self.collect(child, part)


@functools.cache
def _overloads(op: str) -> list:
    packet = getattr(torch.ops.aten, op, None)
    return [getattr(packet, o) for o in packet.overloads()] if packet is not None else []


@functools.cache
def composite(op: str) -> bool:
    """Whether an overload of aten::op decomposes above the backends (CompositeImplicitAutograd)."""
    def has(o, key: str) -> bool:
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(o.name(), key)
        except RuntimeError:  # TorchScript's list overloads (select.t): no dispatcher entry
            return False
    # silu_backward has a composite fallback and a CPU kernel, which is what runs
    return any(has(o, "CompositeImplicitAutograd") and not has(o, "CPU")
               and not has(o, "CompositeExplicitAutograd") for o in _overloads(op))


# Allocations: a compiled graph's wrapper makes its buffers with them; no kernel runs.
ALLOCATIONS = {"empty", "empty_strided", "new_empty_strided", "new_empty", "empty_like"}


@functools.cache
def no_kernel(op: str) -> bool:
    return op in METADATA or op in ALLOCATIONS or any(o.is_view for o in _overloads(op))


class HostIterator:
    """The data loader's iterator, its items counted as host operations."""

    def __init__(self, it, counter: Counts):
        self.it, self.counter = it, counter

    def __next__(self):
        with self.counter.within("host"):
            return next(self.it)


def instrument(trainer, counter: Counts) -> contextlib.ExitStack:
    """Wrap the step's pieces so that each operation is counted under its part. Undone on exit."""
    from xurdif.train import batch as batch_mod
    from xurdif.train.network import compiles_forward

    stack = contextlib.ExitStack()
    m, acc = trainer.model, trainer.acc

    def patch(obj, name, part):
        real = getattr(obj, name)
        had = name in vars(obj) if hasattr(obj, "__dict__") else False
        setattr(obj, name, counter.wrap(real, part))

        def undo():
            if had:
                setattr(obj, name, real)
            else:
                delattr(obj, name)
        stack.callback(undo)

    patch(trainer, "micro_batch", "batch")
    patch(batch_mod.draws, "noise", "noise")
    # Operations on host tensors: the per-sample draws, the data loader's crops and flips, the
    # augmentation's matrices. On a GPU they run on the CPU beside it and launch nothing there.
    patch(batch_mod.augment, "draw_params", "host")
    patch(batch_mod.augment, "plan", "host")
    patch(batch_mod.draws, "timesteps_and_levels", "host")
    patch(trainer.batches.loss, "levels", "host")
    source = trainer.batches.source
    if getattr(source, "feed", None) is not None:  # the loader's iterator, opened by the warm-up steps
        feed = source.feed
        source.feed = HostIterator(feed, counter)
        stack.callback(lambda: setattr(source, "feed", feed))
    if compiles_forward(trainer.r.train, trainer.world):  # one graph: a wrapper inside would recompile it
        patch(trainer, "forward", "net fwd+loss")
    else:
        # Loss.__call__ is looked up on the class: wrap the instance's call through the trainer.
        real_loss = trainer.loss
        trainer.loss = counter.wrap(real_loss, "loss")
        stack.callback(lambda: setattr(trainer, "loss", real_loss))
        patch(m, "denoise", "net fwd")
    patch(acc, "backward", "backward")
    patch(acc, "clip_grad_norm_", "clip")
    patch(m.opt, "step", "optimizer")
    patch(m.opt, "zero_grad", "optimizer")
    patch(m, "update_emas", "ema")
    return stack


def make_trainer(recipe_path: Path, preset: str, size: int, batch: int, out: Path, extra: list[str]):
    from accelerate.state import AcceleratorState

    from xurdif.recipe import load_recipe
    from xurdif.train.loop import Trainer, make_accelerator
    from xurdif.train.outputs import RunOutputs

    AcceleratorState._reset_state(True)
    recipe = load_recipe(recipe_path, [
        f"data.path={FIXTURE}", f"data.size={size}", f"model.preset={preset}", f"train.batch_size={batch}",
        f"train.output_dir={out}", "train.steps=1000", "train.time=null", "log.every_steps=1000",
        "samples.every_steps=0", "checkpoint.every_steps=1000", *extra])
    acc = make_accelerator(recipe)
    return Trainer(recipe, acc, RunOutputs(recipe, recipe.run_dir, True))


def count_step(trainer, warmup: int = 3, profiled: bool = False) -> Counts:
    """The operations of one ordinary step after `warmup` steps; profiled: from the profiler's
    record (ProfiledCounter), which a compiled step needs."""
    for _ in range(warmup):
        trainer.step()
    counter = ProfiledCounter() if profiled else OpCounter()
    with instrument(trainer, counter), counter:
        trainer.step()
    return counter


def device_kernels(c: Counts) -> int:
    """What one eager step launches on a GPU: the operations that are no views and do not run
    on host tensors."""
    return c.total(kernels=True) - c.total("host", kernels=True)


# With train.compile: reduce-overhead (one process) these parts are the step's two CUDA graphs
# (the forward with its loss terms, and its backward) and the noise one compiled kernel.
GRAPHED = ("net fwd", "loss", "net fwd+loss", "backward")


def graphed_kernels(c: Counts) -> int:
    """What the same step launches with train.compile: reduce-overhead: two graph replays, one
    noise kernel, and the eager rest as counted here (an upper bound: the graphs' capture is
    checked on a GPU only, tests/test_cuda.py)."""
    return device_kernels(c) - sum(c.total(p, kernels=True) for p in (*GRAPHED, "noise")) + 2 + 1


def table(name: str, c: Counts, top: int, detail: bool = False) -> str:
    lines = [f"{name}: {c.total()} aten operations in one step, {c.total(kernels=True)} of them not views; "
             f"on a GPU {device_kernels(c)} kernel launches (no views, no host operations), "
             f"{graphed_kernels(c)} with train.compile: reduce-overhead (CUDA graphs)",
             f"  {'part':<10} {'ops':>6} {'kernels':>8}"]
    for p in PARTS:
        if c.total(p):
            names = ", ".join(f"{k} {n}" for k, n in c.names(p).most_common(top)) if detail else ""
            lines.append(f"  {p:<10} {c.total(p):>6} {c.total(p, True):>8}  {names}".rstrip())
    lines.append("  top operations: " + ", ".join(f"{k} {n}" for k, n in c.names().most_common(top)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "small-data.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    ap.add_argument("--detail", action="store_true", help="the top operations of each part too")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true",
                    help="count from torch.profiler's record instead of a dispatch mode (what --compile uses)")
    ap.add_argument("--compile", nargs="?", const="true", default=None, metavar="MODE",
                    help="count a step with train.compile (default mode true; inductor on this machine: "
                         "minutes of compiling per preset); implies --profile")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.compile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # each generated CPU kernel a profiler event
        a.set = [*a.set, f"train.compile={a.compile}"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            trainer = make_trainer(a.recipe, preset, a.size, a.batch, Path(tmp) / preset, a.set)
            c = count_step(trainer, a.warmup, profiled=a.profile or bool(a.compile))
            title = f"{preset} {a.size}px batch {a.batch}" + (f", train.compile {a.compile}" if a.compile else "")
            print(table(title, c, a.top, a.detail), flush=True)
            results[preset] = {"total": c.total(), "kernels": c.total(kernels=True), "host": c.total("host"),
                               "device_kernels": device_kernels(c), "graphed_kernels": graphed_kernels(c),
                               "parts": {p: c.total(p) for p in PARTS},
                               "kernel_parts": {p: c.total(p, True) for p in PARTS},
                               "top": dict(c.names().most_common(a.top)),
                               "by_part": {p: dict(c.names(p)) for p in PARTS if c.total(p)}}
            del trainer
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
