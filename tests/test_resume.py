"""Resume and multi-process equivalence through the real command line."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
# Short, with warmup + cosine LR and dropout, so that every random draw matters.
COMMON = ["train.steps=16", "checkpoint.every_steps=4", "samples.n=2", "samples.steps=2",
          "optim.warmup_images=32", "optim.lr_schedule=cosine", "model.dropout=0.1", "data.hflip=true",
          "data.crop=random", "data.size=12",
          # Biases that feed a GroupNorm have a gradient of exactly zero, which rounding makes
          # ±1e-12; Adam with eps 1e-8 turns that into lr-sized steps of random sign. A larger
          # eps keeps the cross-process comparisons about the loop, not about rounding noise.
          "optim.eps=1e-3"]


def cmd(out, *extra, procs=1):
    launch = [sys.executable, str(ROOT / "launch.py")]
    if procs > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "launch.py")]
    return launch + [RECIPE, f"train.output_dir={out}", *COMMON, *extra]


def run(out, *extra, procs=1):
    res = subprocess.run(cmd(out, *extra, procs=procs), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def relative_error(a: dict, b: dict) -> float:
    va = torch.cat([a[k].flatten() for k in sorted(a)])
    vb = torch.cat([b[k].flatten() for k in sorted(a)])
    return float((va - vb).norm() / va.norm())


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run(out)
    return weights(out)


def sigkill_after_step_8_then_resume(out: Path, *extra: str) -> dict[str, torch.Tensor]:
    """SIGKILL a run once its step-8 checkpoint exists, resume it (--resume auto) with
    the same settings and return the final weights."""
    proc = subprocess.Popen(cmd(out, *extra), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000008").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "checkpoints" / "step-0000016").exists()
    res = run(out, *extra)
    assert "resumed from" in res.stderr
    return weights(out)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_is_bitwise_identical(tmp_path, reference):
    assert_identical(sigkill_after_step_8_then_resume(tmp_path / "run"), reference)


@pytest.mark.slow
def test_sigterm_saves_and_exits_75_then_resumes_identically(tmp_path, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd(out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000004").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-2000:]  # stopped, not finished: run me again
    lines = [l for l in (stdout + stderr).splitlines() if l.startswith("stopped at step")]
    assert len(lines) == 1 and "checkpoint saved in" in lines[0]
    step = int(lines[0].split()[3].rstrip(":"))
    assert 4 <= step < 16 and (out / "checkpoints" / f"step-{step:07d}" / "manifest.json").exists()
    run(out)
    assert_identical(weights(out), reference)


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    steps = ["train.steps=4", "model.dropout=0.0"]
    run(one, *steps, "train.batch_size=8")
    run(two, *steps, "train.batch_size=4", procs=2)
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    assert relative_error(a, b) < 1e-5


@pytest.mark.slow
def test_checkpoint_moves_between_process_counts(tmp_path):
    # Constant LR: the first leg stops at step 8 by its own length, so the length may change.
    # No dropout: its masks are drawn per process (exact resume needs the same process count).
    const = "optim.lr_schedule=constant model.dropout=0.0".split()
    ref = tmp_path / "ref"
    run(ref, *const, "train.batch_size=8")
    # 2 processes x 4 write the step-8 checkpoint; 1 process x 8 finishes: the same run.
    out = tmp_path / "run"
    run(out, *const, "train.batch_size=4", "train.steps=8", procs=2)
    res = run(out, *const, "train.batch_size=8")
    assert "recipe changed on resume: train.batch_size: 4 -> 8" in res.stderr
    assert relative_error(weights(out), weights(ref)) < 1e-5
    # ... and the other way round: 1 process writes step 8, 2 processes finish.
    back = tmp_path / "back"
    run(back, *const, "train.batch_size=8", "train.steps=8")
    run(back, *const, "train.batch_size=4", procs=2)
    assert relative_error(weights(back), weights(ref)) < 1e-5


@pytest.mark.slow
def test_unsafe_recipe_change_on_resume_is_refused(tmp_path):
    out = tmp_path / "run"
    run(out, "train.steps=4")
    res = subprocess.run(cmd(out, "train.steps=8", "model.base_width=24"), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 1
    assert "recipe changed since the run started, in settings that cannot change on resume: " \
           "model.base_width: 16 -> 24" in res.stderr
    res = subprocess.run(cmd(out, "train.steps=8", "train.batch_size=4"), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 1 and "global batch of 8" in res.stderr


@pytest.mark.slow
def test_sigkill_with_loader_workers_then_resume_is_bitwise_identical(tmp_path, reference):
    # The reference ran with data.num_workers 0; two workers load the same micro-batches.
    assert_identical(sigkill_after_step_8_then_resume(tmp_path / "run", "data.num_workers=2"), reference)


@pytest.mark.slow
def test_resume_from_a_checkpoint_of_other_noise_draws_warns(tmp_path):
    """A checkpoint saved before the noise moved to the device resumes, saying that the rest
    of the run is not bit for bit what it would have been."""
    import hashlib
    import json

    out = tmp_path / "run"
    run(out, "train.steps=4")
    res = run(out, "train.steps=8")
    assert "resumed from" in res.stderr and "drew its noise differently" not in res.stderr
    ck = out / "checkpoints" / "step-0000008"
    state = json.loads((ck / "state.json").read_text())
    assert state["noise_draws"]
    del state["noise_draws"]  # as an earlier xurdif wrote it
    (ck / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    manifest = json.loads((ck / "manifest.json").read_text())
    data = (ck / "state.json").read_bytes()
    manifest["files"]["state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    res = run(out, "train.steps=12")
    assert "resumed from" in res.stderr and "drew its noise differently" in res.stderr


def live_ranks(out: Path) -> list[int]:
    """Processes whose command line trains into `out`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"train.output_dir={out}".encode() in args and int(pid) != os.getpid():
            found.append(int(pid))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_die_with_their_launcher_and_the_rerun_is_bitwise_identical(tmp_path):
    """kill -9 of `accelerate launch`'s process group: torch puts each rank in a session of
    its own, so before the fix both ranks trained on as orphans. Now they stop (checkpoint,
    exit) and the same command finishes the run as if nothing happened."""
    extra = ["train.batch_size=4"]
    whole = tmp_path / "whole"
    run(whole, *extra, procs=2)
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd(out, *extra, procs=2), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000008").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120
    while live_ranks(out):
        assert time.time() < deadline, f"ranks outlived their launcher: {live_ranks(out)}"
        time.sleep(0.2)
    res = run(out, *extra, procs=2)
    assert "resumed from" in res.stderr
    assert_identical(weights(out), weights(whole))
