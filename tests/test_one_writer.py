"""One writer per folder (issue 30): a second renderer or trainer on a folder that a
live process is writing gets one line and leaves it alone; a dead holder leaves
nothing held. Real processes, through the real commands."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xurdif.lock import FolderBusy, folder_lock
from xurdif.models.unet import UNet, unet_config
from xurdif.weights import ModelMeta, save_model_file

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
pytestmark = pytest.mark.slow


def test_a_lock_is_refused_while_held_and_free_after(tmp_path):
    code = ("import sys; from xurdif.lock import folder_lock\n"
            f"with folder_lock({str(tmp_path / 'out')!r}, 'renderer'):\n    print('no', flush=True)")
    with folder_lock(tmp_path / "out", "renderer"):
        with pytest.raises(FolderBusy, match=rf"^{tmp_path / 'out'}: this process \(pid {os.getpid()}\) is "):
            with folder_lock(tmp_path / "out", "renderer"):
                pass
        # The refusal above did not drop the lock: another process is still turned away.
        other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert other.returncode == 1 and "FolderBusy" in other.stderr
        assert f"renderer pid {os.getpid()} (since " in other.stderr
    with folder_lock(tmp_path / "out", "renderer"):  # released
        pass


def test_a_killed_holder_leaves_nothing_held(tmp_path):
    code = ("import sys, time; from xurdif.lock import folder_lock\n"
            f"with folder_lock({str(tmp_path / 'out')!r}, 'renderer'):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy):
        with folder_lock(tmp_path / "out", "renderer"):
            pass
    proc.kill()
    proc.wait()
    with folder_lock(tmp_path / "out", "renderer"):
        pass


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = unet_config("tiny", base_width=8, mults=[1, 2], norm_groups=4, head_dim=8)
    net = UNet(**cfg)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    meta = ModelMeta(architecture="xurdif_unet", net_config=cfg, image_size=(16, 16), source="test")
    save_model_file(path, meta, net.state_dict(), None)
    return path


def sample_cmd(model: Path, out: Path, n: int) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "sample.py"), str(model), "--prompt", "a", "--n", str(n),
            "--steps", "2", "--batch-size", "1", "--threads", "1", "-o", str(out), "--no-progress"]


def test_two_renderers_on_one_folder_never_double_the_work(model_file, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    first = subprocess.Popen(sample_cmd(model_file, out, 300), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "manifest.jsonl").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run(sample_cmd(model_file, out, 300), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"error: {out}: renderer pid {first.pid} " + second.stderr.split(f"renderer pid {first.pid} ")[1].strip()]
    assert "is writing it already; wait for it to finish" in second.stderr
    first.send_signal(signal.SIGINT)  # finishes the current batch and stops
    first.communicate(timeout=120)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.parent.name != "contact-sheets")
    assert len(records) == len(files) == len({r["file"] for r in records}) > 0


def test_a_second_trainer_on_a_run_folder_is_turned_away(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "launch.py"), RECIPE, f"train.output_dir={out}", "data.size=8",
           "samples.n=1", "samples.steps=1", "checkpoint.every_steps=4", "train.steps=100000"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-0000004").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"error: {out}: training run pid {first.pid} (since " in second.stderr
    assert "is writing it already" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 75
    again = subprocess.run(cmd[:-1] + ["train.steps=8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]  # the lock went with the first process
