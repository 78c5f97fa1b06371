"""Post-hoc EMA: tracking, snapshots, least-squares reconstruction and xurdif-ema."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xurdif.recipe import load_recipe
from xurdif.train.ema import power_exponent
from xurdif.train.posthoc import PosthocEmas, list_snapshots, profile_inner, reconstruct, std_key

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"


def test_profile_inner_product_matches_numeric_integral():
    tau = np.linspace(0, 1000, 2_000_001)[1:]

    def profile(t, std):
        g = power_exponent(std)
        return np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)

    for (ta, sa, tb, sb) in [(1000, 0.05, 1000, 0.1), (400, 0.05, 900, 0.1), (900, 0.2, 300, 0.03)]:
        numeric = np.trapezoid(profile(ta, sa) * profile(tb, sb), tau)
        assert profile_inner(ta, sa, tb, sb) == pytest.approx(numeric, rel=1e-3)


def simulate(run_dir: Path, stds, every: int = 160, steps: int = 200, batch: int = 8) -> dict:
    """A 'network' whose weights drift upwards over training, tracked like the trainer does."""
    net = torch.nn.Linear(4, 3)
    phase = torch.linspace(0, 3, 15)
    tracked = PosthocEmas(net, stds)
    for step in range(1, steps + 1):
        before, after = (step - 1) * batch, step * batch
        with torch.no_grad():
            flat = after / (steps * batch) + 0.05 * torch.sin(after / 90 + phase)
            net.weight.copy_(flat[:12].view(3, 4))
            net.bias.copy_(flat[12:])
        tracked.update(net, before, after)
        if after // every > before // every or step == steps:
            tracked.write_snapshot(run_dir, step, after)
    return tracked.state_dict()


def test_reconstructing_a_stored_length_gives_it_back(tmp_path):
    final = simulate(tmp_path, [0.05, 0.10])
    snaps = list_snapshots(tmp_path)
    assert [s.images_seen for s in snaps] == [160 * k for k in range(1, 11)]
    assert snaps[-1].step == 200 and snaps[-1].stds == (0.05, 0.10)
    for std in (0.05, 0.10):
        got, info = reconstruct(tmp_path, std)
        assert info["images_seen"] == 1600 and info["inputs"] == 20
        for k, v in got.items():
            assert torch.allclose(v, final[f"{std_key(std)}.{k}"], atol=1e-5, rtol=0), (std, k)


def test_intermediate_length_lies_between_and_matches_tracking(tmp_path):
    simulate(tmp_path, [0.05, 0.10])
    reference = simulate(tmp_path / "ref", [0.075])  # what tracking 0.075 during training gives
    short, _ = reconstruct(tmp_path, 0.05)
    long, _ = reconstruct(tmp_path, 0.10)
    mid, _ = reconstruct(tmp_path, 0.075)
    for k in mid:
        lo, hi = torch.minimum(short[k], long[k]), torch.maximum(short[k], long[k])
        assert (mid[k] > lo).all() and (mid[k] < hi).all(), k
        gap = (short[k] - long[k]).abs()
        err = (mid[k] - reference[f"{std_key(0.075)}.{k}"]).abs()
        assert (err < 0.1 * gap).all(), (k, err.max(), gap.min())


def test_no_snapshots_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots; train with ema.posthoc_stds set"):
        reconstruct(tmp_path, 0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from xurdif.train.cli import main as launch_main

    out = tmp_path_factory.mktemp("phema") / "run"
    rc = launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", "train.steps=6", "checkpoint.every_steps=3",
                      "ema.posthoc_stds=[0.05, 0.1]", "ema.snapshot_every_images=16", "log.tensorboard=false",
                      "eval.real_images=16", "eval.holdout=0.25", "eval.kid_every_steps=100",
                      "eval.kid_samples=8", "eval.kid_steps=2"])  # one cheap evaluation: the last step's
    assert rc == 0
    return out


def test_training_stores_posthoc_emas_and_snapshots(run):
    snaps = list_snapshots(run)
    assert [(s.step, s.images_seen) for s in snaps] == [(2, 16), (4, 32), (6, 48)]
    ck = load_file(run / "checkpoints" / "step-0000006" / "posthoc.safetensors")
    last = load_file(snaps[-1].path)
    assert set(ck) == set(last) and any(k.startswith("std-0.0500.") for k in ck)
    assert all(torch.equal(ck[k], last[k]) for k in ck)
    # The two lengths differ, and neither is the exported EMA (ema.kind: warmup) nor the raw weights.
    model = load_file(run / "checkpoints" / "step-0000006" / "model.safetensors")
    k = next(k for k in model if k.endswith("weight"))
    assert not torch.equal(ck[f"std-0.0500.{k}"], ck[f"std-0.1000.{k}"])
    assert not torch.equal(ck[f"std-0.0500.{k}"], model[k])
    state = json.loads((run / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["images_seen"] == 48


@pytest.mark.slow  # loads Inception: about a minute on a shared CPU
def test_cli_writes_a_loadable_model(run, capsys):
    from xurdif.train.ema_cli import main as ema_main
    from xurdif.weights import load_network

    out = run / "best.safetensors"
    assert ema_main([str(run), "--std", "0.05", "0.08", "--samples", "8", "--steps", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "std 0.050: KID" in text and "std 0.080: KID" in text and "<- best" in text
    # Judged as training judged it: against the 8 images the run held out, not the ones it trained on.
    assert "KID against 8 held-out images (0.25 of " in text and "memorisation against 24 training images" in text
    # The written length is the lower-KID one of those printed (unless the lower copies).
    printed = {float(m[0]): (float(m[1]), float(m[2]) / 100)
               for m in re.findall(r"std (\S+): KID (\S+) ± \S+, memorised (\S+)%", text)}
    net, meta = load_network(out, "ema")
    info = meta.extra["posthoc_ema"]
    limit = load_recipe(run / "recipe.yaml").eval.memorised_max
    fine = {s: k for s, (k, m) in printed.items() if m < limit} or {s: k for s, (k, _) in printed.items()}
    assert sorted(printed) == [0.05, 0.08] and info["std"] == min(fine, key=fine.get)
    assert info["images_seen"] == 48 and info["kid"] == pytest.approx(printed[info["std"]][0], abs=1e-5)
    want, _ = reconstruct(run, info["std"])
    assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())


def test_cli_errors_are_one_line(run, tmp_path, capsys):
    from xurdif.train.ema_cli import main as ema_main

    assert ema_main([str(run), "--std", "0.5"]) == 2
    assert capsys.readouterr().err == "xurdif-ema: --std 0.5: out of range; each std must be in 0.001..0.28\n"
    assert ema_main([str(tmp_path), "--std", "0.05"]) == 2
    want = f"xurdif-ema: {tmp_path / 'recipe.yaml'}: not found; RUN must be a training run folder\n"
    assert capsys.readouterr().err == want


def test_resume_drops_snapshots_of_the_abandoned_branch(tmp_path):
    from xurdif.train.posthoc import drop_snapshots_after

    simulate(tmp_path, [0.05], every=400, steps=150)  # snapshots at 400, 800, 1200
    gone = drop_snapshots_after(tmp_path, 800)
    assert [p.name for p in gone] == ["images-0000001200.safetensors"]
    assert [s.images_seen for s in list_snapshots(tmp_path)] == [400, 800]
