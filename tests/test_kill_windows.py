"""A kill -9 in each window between two writes of a run, through the real command line:
the same command run again must finish the run, with model.safetensors holding the
newest checkpoint's weights and no temporary files left (issue 17).

XURDIF_KILL_AT makes the process kill itself at a named point (xurdif/killpoint.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xurdif.train.checkpoint import latest_checkpoint, list_checkpoints
from xurdif.weights import read_meta

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
# Each test runs the command 2-3 times: seconds on an idle machine, more on a shared one.
pytestmark = pytest.mark.slow
FAST = ["data.size=8", "samples.n=1", "samples.steps=1", "checkpoint.every_steps=4", "checkpoint.keep_last=1"]


def launch(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XURDIF_KILL_AT"}
    if kill_at:
        env["XURDIF_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), RECIPE, f"train.output_dir={out}", *FAST, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def killed(out: Path, *extra: str, kill_at: str) -> None:
    res = launch(out, *extra, kill_at=kill_at)
    assert res.returncode == -signal.SIGKILL, f"not killed at {kill_at}: rc {res.returncode}\n{res.stderr[-2000:]}"


def finished(out: Path, *extra: str) -> subprocess.CompletedProcess:
    res = launch(out, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"done: {out / 'model.safetensors'}"
    return res


def temp_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))


def assert_export_is_newest_checkpoint(out: Path, step: int) -> None:
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == f"step-{step:07d}"
    exported = load_file(out / "model.safetensors")
    expected = {f"ema.{k}": v for k, v in load_file(ckpt / "ema.safetensors").items()}
    expected.update({f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()})
    assert exported.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(exported[k], expected[k])]
    assert not differ, f"{len(differ)} tensors of model.safetensors differ from {ckpt.name}, e.g. {differ[:3]}"
    assert read_meta(out / "model.safetensors").step == step
    assert temp_files(out) == []


def test_kill_after_creating_the_run_folder_then_same_command_starts_afresh(tmp_path):
    out = tmp_path / "run"
    killed(out, "train.steps=8", kill_at="after-run-dir")
    assert (out / "recipe.yaml").is_file() and list_checkpoints(out) == []
    res = finished(out, "train.steps=8")
    assert_export_is_newest_checkpoint(out, 8)
    # The logs of the killed start are kept aside, and the log says where.
    aside = [p for p in out.iterdir() if p.name.startswith(".aborted-")]
    assert len(aside) == 1 and (aside[0] / "tb").is_dir() and (aside[0] / "recipe.yaml").is_file()
    assert f"no usable checkpoint in {out}: starting afresh; the earlier start's files moved to {aside[0]}" \
        in res.stderr


def test_kill_mid_first_save_then_same_command_starts_afresh(tmp_path):
    out = tmp_path / "run"
    killed(out, "train.steps=8", kill_at="mid-save")
    assert temp_files(out) == ["checkpoints/step-0000004.tmp"]
    assert (out / "checkpoints" / "step-0000004.tmp" / "model.safetensors").is_file()
    finished(out, "train.steps=8")
    assert_export_is_newest_checkpoint(out, 8)


def test_kill_after_final_checkpoint_rename_then_rerun_exports_it_and_prunes(tmp_path):
    out = tmp_path / "run"
    killed(out, "train.steps=12", kill_at="after-checkpoint-rename@12")
    assert [p.name for p in list_checkpoints(out)] == ["step-0000008", "step-0000012"]
    assert read_meta(out / "model.safetensors").step == 8  # the kill landed before the export
    # What a kill during an export or a save leaves behind.
    (out / ".model.safetensorsk2j4x9.tmp").write_bytes(b"\0" * 1000)
    (out / "checkpoints" / "step-0000016.tmp").mkdir()
    finished(out, "train.steps=12")
    assert_export_is_newest_checkpoint(out, 12)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000012"]  # retention ran (keep_last=1)


def test_kill_mid_recipe_write_then_resume_sees_no_bogus_changes(tmp_path):
    out = tmp_path / "run"
    finished(out, "train.steps=8")
    killed(out, "train.steps=12", kill_at="mid-recipe-write")
    res = finished(out, "train.steps=12")
    assert "recipe changed on resume: train.steps: 8 -> 12" in res.stderr
    assert_export_is_newest_checkpoint(out, 12)


def test_unparseable_recipe_yaml_falls_back_to_the_checkpoint_copy(tmp_path):
    out = tmp_path / "run"
    finished(out, "train.steps=8")
    (out / "recipe.yaml").write_text("data:\n  path: tests/fixtures/emo")  # cut off mid-write
    res = finished(out, "train.steps=12")
    assert "recipe changed on resume: train.steps: 8 -> 12" in res.stderr
    assert "changed since the run started" not in res.stderr
    assert_export_is_newest_checkpoint(out, 12)
    assert "emoji-faces-32" in (out / "recipe.yaml").read_text()  # rewritten whole


def test_bad_data_path_leaves_no_run_folder_and_the_fixed_command_runs(tmp_path):
    out, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    res = launch(out, "train.steps=4", f"data.path={empty}")
    assert res.returncode == 1 and f"data.path: no images in {empty}" in res.stderr
    assert not out.exists()
    finished(out, "train.steps=4")
    assert_export_is_newest_checkpoint(out, 4)


def test_sigterm_stop_ends_with_a_stopped_line(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "launch.py"), RECIPE, f"train.output_dir={out}", *FAST, "train.steps=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-0000004").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output[-2000:]
    last = output.strip().splitlines()[-1].split("\r")[-1]
    step = latest_checkpoint(out).name
    assert last == f"stopped at step {int(step[5:])}: checkpoint saved in {out / 'checkpoints' / step}", output[-500:]
