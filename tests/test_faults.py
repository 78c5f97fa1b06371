"""Faults during training: non-finite steps, failed saves, foreign checkpoints."""
from pathlib import Path

import torch

from xurdif.train import checkpoint as C
from xurdif.train import loop
from xurdif.train.cli import main as launch_main

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
FAST = ["data.size=8", "samples.n=1", "samples.steps=1", "log.tensorboard=false"]


def test_non_finite_steps_are_skipped_then_stop_with_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = loop.loss_terms

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        total, terms = real(*args, **kwargs)
        if calls["n"] in (3,) or calls["n"] >= 7:  # one isolated bad step, then a bad streak
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(loop, "loss_terms", poisoned)
    out = tmp_path / "run"
    rc = launch_main([RECIPE, f"train.output_dir={out}", "train.max_nonfinite=3", "checkpoint.every_steps=5", *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert "3 non-finite steps in a row at step 9; stopping." in err
    assert f"The last good checkpoint is in {out / 'checkpoints'}" in err
    assert [p.name for p in C.list_checkpoints(out)] == ["step-0000005"]
    ck = C.load_checkpoint(out / "checkpoints" / "step-0000005")
    assert ck["state"]["nonfinite_total"] == 1  # the isolated bad step was skipped and counted
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_failed_save_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, capsys):
    real = C.save_file

    def full_at_step_10(tensors, path, *a, **k):
        if "step-0000010" in str(path):
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(C, "save_file", full_at_step_10)
    out = tmp_path / "run"
    rc = launch_main([RECIPE, f"train.output_dir={out}", "checkpoint.every_steps=5", *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"could not write checkpoint {out}/checkpoints/step-0000010: No space left on device; " \
           "earlier checkpoints are intact" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000005"]
    assert C.validate(out / "checkpoints" / "step-0000005") is None


def test_checkpoint_of_another_model_shape_names_the_keys(tmp_path, capsys):
    first = tmp_path / "first"
    assert launch_main([RECIPE, f"train.output_dir={first}", "train.steps=5", "checkpoint.every_steps=5", *FAST]) == 0
    ckpt = first / "checkpoints" / "step-0000005"
    rc = launch_main([RECIPE, f"train.output_dir={tmp_path / 'second'}", "model.base_width=24", "--resume",
                      str(ckpt), *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{ckpt}: checkpoint is of a different model shape than the recipe's; mismatching keys" in err
    assert "down.0.emb.bias (32,) vs (48,)" in err
