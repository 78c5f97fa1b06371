"""An ordinary training step never makes the host wait for the device: loss sums,
counters and the non-finite skip stay on the device and are read at log steps only.
On CPU the waits cannot be seen, so the test counts the calls that would wait on a
GPU: Tensor.item, __float__, __bool__, tolist, and device-to-host copies (.cpu(), .numpy())."""
import traceback
from pathlib import Path

import pytest
import torch

from xurdif.recipe import load_recipe
from xurdif.train.loop import Trainer, make_accelerator
from xurdif.train.outputs import RunOutputs

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"
READS = ("item", "__float__", "__bool__", "tolist", "cpu", "numpy")
# The image pipeline works on host tensors by design (decoding, crops, flips, draws).
HOST_SIDE = (str(ROOT / "xurdif" / "data"), str(ROOT / "xurdif" / "train" / "draws.py"))


def count_reads(monkeypatch) -> list[str]:
    """Patch the reading methods of torch.Tensor; each call appends its call site."""
    seen: list[str] = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename
                      and "/accelerate/" not in f.filename]
            if not any(f.filename.startswith(HOST_SIDE) for f in frames):
                where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)), "?")
                seen.append(f"{_name} at {where}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


def trainer_for(tmp_path, *overrides) -> Trainer:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    recipe = load_recipe(RECIPE, [f"train.output_dir={tmp_path / 'run'}", "train.steps=1000", "log.every_steps=4",
                                  "data.size=8", *overrides])
    acc = make_accelerator(recipe)
    return Trainer(recipe, acc, RunOutputs(recipe, recipe.run_dir, True))


@pytest.mark.parametrize("overrides", [
    (),
    ("train.grad_accum=2", "loss.l1=0.5", "loss.edge_l1=0.5", "loss.ssim=0.2", "loss.min_snr_gamma=5",
     "diffusion.prediction=v", "model.dropout=0.1"),
])
def test_no_host_reads_on_ordinary_steps(tmp_path, monkeypatch, overrides):
    trainer = trainer_for(tmp_path, *overrides)
    trainer.step()  # the first step creates the optimizer state
    seen = count_reads(monkeypatch)
    stats = [trainer.step() for _ in range(3)]
    assert seen == []
    # The counter does see reads: the log step's single read of the statistics.
    from xurdif.train.loop import window_means

    means = window_means(stats, trainer.acc)
    trainer.check_nonfinite()
    assert seen and all(s.startswith("tolist") for s in seen), seen
    assert means["total"] > 0 and means["lr"] == pytest.approx(trainer.r.optim.lr)


def test_non_finite_step_is_skipped_on_the_device(tmp_path, monkeypatch):
    from xurdif.train import loop

    trainer = trainer_for(tmp_path)
    trainer.step()
    net = trainer.acc.unwrap_model(trainer.net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    opt_steps = [s["step"].clone() for s in trainer._opt_inner.state.values()]
    real = loop.loss_terms
    monkeypatch.setattr(loop, "loss_terms", lambda *a, **k: (lambda t, terms: (t * float("nan"), terms))(*real(*a, **k)))
    seen = count_reads(monkeypatch)
    trainer.step()
    assert seen == []  # skipped without asking the host
    monkeypatch.undo()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.state_dict().items())
    assert [s["step"] for s in trainer._opt_inner.state.values()] == opt_steps  # Adam's step count too
    trainer.check_nonfinite()
    assert (trainer.clock.nonfinite_in_row, trainer.clock.nonfinite_total) == (1, 1)
    trainer.step()  # a finite step moves the weights again and ends the streak
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    trainer.check_nonfinite()
    assert (trainer.clock.nonfinite_in_row, trainer.clock.nonfinite_total) == (0, 1)
