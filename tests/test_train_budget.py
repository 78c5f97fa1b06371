"""train.time: a wall-clock budget fixed as a length in images after a speed probe."""
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xurdif.recipe import load_recipe
from xurdif.train import loop
from xurdif.train.cli import main as launch_main
from xurdif.train.lr import learning_rate

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"
BUDGET = ["train.steps=null", "train.time=6s", "train.time_probe_steps=3", "optim.lr_schedule=cosine",
          "checkpoint.every_steps=4", "checkpoint.keep_last=1000", "data.size=8", "samples.every_steps=0"]


def state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A budget run whose length, once measured, stays (no refits at checkpoints: their
    timing differs between an uninterrupted and a resumed run, and these tests compare
    the two bit for bit)."""
    out = tmp_path_factory.mktemp("budget") / "run"
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "REFIT_UNTIL", 0.0)
        assert launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", *BUDGET]) == 0
    return out, time.perf_counter() - started


def test_tiny_budget_ends_with_its_length_recorded_and_lr_at_the_cosine_end(budget_run):
    out, seconds = budget_run
    assert seconds < 6 + 30  # ends near the budget (final grid and checkpoint come on top)
    last = sorted((out / "checkpoints").iterdir())[-1]
    s = state(last)
    assert s["time_budget_s"] == 6.0
    assert s["total_images"] == s["images_seen"] and s["total_images"] % 8 == 0
    assert s["step"] > 5  # more than the probe: the budget's rest was filled at the measured speed
    r = load_recipe(FIXTURE_RECIPE, [f"train.output_dir={out}", *BUDGET])
    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    lrs = ea.Scalars("train/lr")
    assert lrs[-1].step == s["step"]
    # Logged LRs are means over the steps since the previous log (log.every_steps: 5); step k
    # trains at images (k - 1) * 8 on the cosine that ends at the recorded length.
    total, first = s["total_images"], (s["step"] - 1) // 5 * 5 + 1
    window = [learning_rate(r.optim, (k - 1) * 8, total) for k in range(first, s["step"] + 1)]
    assert lrs[-1].value == pytest.approx(sum(window) / len(window), rel=1e-6)
    floor = r.optim.lr * r.optim.min_lr_ratio
    assert window[-1] - floor < 0.1 * (r.optim.lr - floor)  # the last step is at the cosine's end
    # Earlier checkpoints (from before the probe ended) record no length; later ones the same one.
    lengths = {state(p)["step"]: state(p)["total_images"] for p in (out / "checkpoints").iterdir()}
    assert lengths[4] == s["total_images"] and all(v == s["total_images"] for v in lengths.values())


def test_resume_after_a_kill_ends_at_the_recorded_length(budget_run, tmp_path, monkeypatch):
    out, _ = budget_run
    total = state(sorted((out / "checkpoints").iterdir())[-1])["total_images"]
    killed = tmp_path / "run"
    shutil.copytree(out, killed)
    # A kill after the step-4 checkpoint: everything later never happened.
    for p in (killed / "checkpoints").iterdir():
        if p.name != "step-0000004":
            shutil.rmtree(p)
    (killed / "model.safetensors").unlink()

    def no_new_measurement(self, probe):
        raise AssertionError("a resumed run must use the recorded length")

    monkeypatch.setattr(loop.Trainer, "fix_length", no_new_measurement)
    monkeypatch.setattr(loop, "REFIT_UNTIL", 0.0)  # as the uninterrupted run
    assert launch_main([str(FIXTURE_RECIPE), f"train.output_dir={killed}", *BUDGET]) == 0
    last = sorted((killed / "checkpoints").iterdir())[-1]
    assert state(last)["images_seen"] == total and state(last)["total_images"] == total
    a, b = load_file(out / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly the uninterrupted run


def test_a_slow_first_measurement_is_measured_again_over_the_lr_warm_up(tmp_path, monkeypatch):
    # Another process starting beside this one makes the probe's steps slow. On a fake clock
    # the trainer reads: every step takes 0.1 s, but steps 2-4 (the probe's 3 steps) 1 s. The
    # length they give is provisional; at the warm-up's end (6 steps of 8 images) the speed
    # over the whole warm-up sets it again.
    calls, now = [], [0.0]
    measure, step = loop.length_from_speed, loop.Trainer.step

    def recorded(*args):
        calls.append((*args[:2], measure(*args)))
        return calls[-1][2]

    def timed_step(self):
        now[0] += 1.0 if 1 <= self.clock.step <= 3 else 0.1
        return step(self)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(loop, "length_from_speed", recorded)
    monkeypatch.setattr(loop, "REFIT_UNTIL", 0.0)  # the measurements alone
    monkeypatch.setattr(loop.Trainer, "step", timed_step)
    out = tmp_path / "run"
    over = [*BUDGET, "train.time=15s", "optim.warmup_images=48", "checkpoint.every_steps=5"]
    assert launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", *over]) == 0
    # After the probe: 24 images in 3 s, 11.9 s left: 32 + 88 images. At the warm-up's end:
    # 40 images in 3.2 s, 11.7 s left: 48 + 144.
    assert [(seen, pytest.approx(speed), length) for seen, speed, length in calls] == [(32, 8.0, 120), (48, 12.5, 192)]
    # The checkpoint inside the warm-up records no length (a resume measures again); later ones the final one.
    recorded_lengths = {state(p)["step"]: state(p)["total_images"] for p in (out / "checkpoints").iterdir()}
    assert recorded_lengths.pop(5) is None
    assert set(recorded_lengths.values()) == {192} and max(recorded_lengths) == 24


@pytest.mark.parametrize("refit", [True, False])
def test_a_budget_ends_on_time_though_saves_cost_time(tmp_path, monkeypatch, refit):
    """On a fake clock: steps take 0.1 s and every checkpoint 0.25 s more, which the speed
    probe cannot see. Fitting the length again at each checkpoint ends within 2 % of the
    budget; without it the run overshoots by far."""
    now = [0.0]
    step, save = loop.Trainer.step, loop.Trainer.save

    def timed_step(self):
        now[0] += 0.1
        return step(self)

    def timed_save(self):
        now[0] += 0.25
        return save(self)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(loop.Trainer, "step", timed_step)
    monkeypatch.setattr(loop.Trainer, "save", timed_save)
    if not refit:
        monkeypatch.setattr(loop, "REFIT_UNTIL", 0.0)
    out = tmp_path / "run"
    over = [*BUDGET, "train.time=60s", "optim.warmup_images=0", "checkpoint.every_steps=10",
            "checkpoint.keep_last=1", "log.tensorboard=false"]
    assert launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", *over]) == 0
    miss = now[0] / 60 - 1
    assert (abs(miss) < 0.02) if refit else (miss > 0.15), now[0]
