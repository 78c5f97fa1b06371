"""Keeping the best model and watching memorisation, with scripted KID scores."""
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xurdif.train import loop
from xurdif.train.cli import main as launch_main
from xurdif.weights import load_state, read_meta

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"
# (kid, memorised share) at steps 2, 4, 6, 8. Step 6 has the lowest KID but memorises.
SCRIPT = [(0.5, 0.0), (0.3, 0.04), (0.1, 0.2), (0.2, 0.3)]
WARNING = "of samples copy a training image, over eval.memorised_max"


@pytest.fixture
def scripted(monkeypatch):
    calls = []

    class FakeMonitor:
        def __init__(self, recipe, data, device):
            pass

        def __call__(self, ema, schedule, meta):
            kid, memo = SCRIPT[len(calls)]
            calls.append(kid)
            return {"kid": kid, "kid_std": 0.01, "memorised": memo}

    monkeypatch.setattr(loop, "KidMonitor", FakeMonitor)
    return calls


def train(out, *extra):
    return launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", "train.steps=8", "eval.kid_every_steps=2",
                        "checkpoint.every_steps=2", "checkpoint.keep_last=10", *extra])


def test_best_model_follows_lowest_kid_under_threshold_and_warns_once(tmp_path, scripted, caplog):
    caplog.set_level(logging.WARNING, logger="xurdif.train")
    out = tmp_path / "run"
    assert train(out) == 0
    assert scripted == [0.5, 0.3, 0.1, 0.2]
    best = out / "model-best.safetensors"
    assert read_meta(best).extra["best"] == {"step": 4, "kid": 0.3, "kid_std": 0.01, "memorised": 0.04}
    ema4 = load_file(out / "checkpoints" / "step-0000004" / "ema.safetensors")
    got = load_state(best, "ema")
    assert got.keys() == ema4.keys() and all(torch.equal(got[k], ema4[k]) for k in got)
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert warnings == ["step 6: 20.0% of samples copy a training image, over eval.memorised_max 5.0%; the model "
                        "is starting to memorise. model-best.safetensors keeps the best model below it"]
    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("eval/memorised_over_max")] == [(6, 1.0)]
    assert [e.step for e in ea.Tensors("eval/warning/text_summary")] == [6]
    state = json.loads((out / "checkpoints" / "step-0000008" / "state.json").read_text())
    assert state["best_kid"] == 0.3 and state["memorised_warned"] is True


def test_stop_on_memorised_saves_and_exits_cleanly(tmp_path, scripted, capsys):
    out = tmp_path / "run"
    assert train(out, "eval.stop_on_memorised=true", "checkpoint.every_steps=5") == 0
    assert scripted == [0.5, 0.3, 0.1]  # no evaluation after the stop
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000005", "step-0000006"]
    state = json.loads((out / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["step"] == 6
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["stopping at step 6: memorisation over eval.memorised_max (eval.stop_on_memorised)",
                          f"stopped at step 6: checkpoint saved in {out / 'checkpoints' / 'step-0000006'}"]
    assert (out / "model.safetensors").is_file()
    assert read_meta(out / "model-best.safetensors").extra["best"]["step"] == 4
