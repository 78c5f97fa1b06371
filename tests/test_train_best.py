"""Keeping the best model and watching memorisation, with scripted KID scores."""
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xurdif.train import loop
from xurdif.train.best import best_summary
from xurdif.train.state import RunState
from xurdif.train.cli import main as launch_main
from xurdif.weights import load_state, read_meta

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"
# (kid, memorised share) at steps 2, 4, 6, 8. Step 6 has the lowest KID but memorises.
SCRIPT = [(0.5, 0.0), (0.3, 0.04), (0.1, 0.2), (0.2, 0.3)]
WARNING = "of samples copy a training image, over eval.memorised_max"


class Script(list):
    """The KIDs the fake monitor returned, in order; .seen: what the trainer gave it; .confirm: the
    share of copies a second measurement with more samples finds, by evaluation (default: the same);
    .samples: the sample counts asked for by second measurements."""


@pytest.fixture
def scripted(monkeypatch):
    scripted = Script()
    calls = scripted
    seen = {}

    class FakeMonitor:
        seconds = 0.0

        def __init__(self, recipe, data, device, heldout):
            seen.update(train_names=data.names(), heldout=heldout)
            self.picture = torch.full((3, 4, 8), len(calls), dtype=torch.uint8)  # which evaluation drew it

        def __call__(self, ema, schedule, meta, samples=None):
            if samples is not None:  # measured again, or the look-back: the last evaluation's scores
                scripted.samples.append(samples)
                kid, memo = SCRIPT[len(calls) - 1]
                return {"kid": kid, "kid_std": 0.005, "memorised": scripted.confirm.get(len(calls) - 1, memo)}
            kid, memo = SCRIPT[len(calls)]
            calls.append(kid)
            self.picture = torch.full((3, 4, 8), len(calls), dtype=torch.uint8)
            return {"kid": kid, "kid_std": 0.01, "memorised": memo}

    monkeypatch.setattr(loop, "KidMonitor", FakeMonitor)
    scripted.seen, scripted.confirm, scripted.samples = seen, {}, []
    scripted.monitor = FakeMonitor
    return scripted


def train(out, *extra):
    return launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", "train.steps=8", "eval.kid_every_steps=2",
                        "checkpoint.every_steps=2", "checkpoint.keep_last=10", *extra])


def test_best_model_follows_lowest_kid_under_threshold_and_warns_once(tmp_path, scripted, caplog, capsys):
    caplog.set_level(logging.WARNING, logger="xurdif.train")
    out = tmp_path / "run"
    assert train(out) == 0
    # The run's last words: which step model-best is, and that the two evaluations after it found
    # no better model (step 6's lower KID copies).
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "model-best.safetensors: step 4, KID 300.0 x1e-3; the 2 evaluations after it, in the last 4 steps "
        "(50% of the run), found no better one", f"done: {out / 'model.safetensors'}"]
    assert scripted == [0.5, 0.3, 0.1, 0.2]
    best = out / "model-best.safetensors"
    # Step 4's 4 % is under the fixture's 5 % limit but not 0: measured again with 4x the samples,
    # whose scores count (and name how many samples they are of).
    assert scripted.samples == [4 * 64]
    assert read_meta(best).extra["best"] == {"step": 4, "kid": 0.3, "kid_std": 0.005, "memorised": 0.04,
                                             "samples": 256.0}
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
    assert state["best_step"] == 4 and state["evals_since_best"] == 2
    report = (out / "report.html").read_text()
    assert "<li>model-best.safetensors: step 4, KID 0.3, memorised 4.0% of 256 samples</li>" in report
    assert "<li>no better model in the 2 evaluations after it, to step 8</li>" in report
    # When copying began: the first evaluation with any copy (step 4, 4 %), in the log and the state.
    assert state["first_copy_step"] == 4
    assert [e.step for e in ea.Tensors("eval/first_copy/text_summary")] == [4]
    # The closest pairs of the best (the 2nd evaluation) and of the last (the 4th) model.
    best_pairs = torch.from_numpy(np.array(Image.open(out / "eval" / "closest-best.png")))
    last_pairs = torch.from_numpy(np.array(Image.open(out / "eval" / "closest-last.png")))
    assert best_pairs.unique().tolist() == [2] and last_pairs.unique().tolist() == [4]
    assert [e.step for e in ea.Scalars("eval/time_share")] == [2, 4, 6, 8]


def test_a_share_under_the_limit_but_not_zero_counts_only_when_more_samples_confirm_it(tmp_path, scripted, caplog):
    """Step 4 shows 4 % copies (under the fixture's 5 %); with four times the samples it is 8 %: so step 4
    is over the limit, the warning comes there, and model-best stays the model of step 2."""
    caplog.set_level(logging.INFO, logger="xurdif.train")
    scripted.confirm[1] = 0.08
    out = tmp_path / "run"
    assert train(out, "eval.stop_on_memorised=true") == 0
    assert scripted == [0.5, 0.3] and scripted.samples == [256]
    assert read_meta(out / "model-best.safetensors").extra["best"] == {
        "step": 2, "kid": 0.5, "kid_std": 0.01, "memorised": 0.0, "samples": 64.0}
    messages = [r.getMessage() for r in caplog.records]
    assert "step 4: 4.0% of 64 samples copy, under eval.memorised_max; measured again with 256: 8.0%" in messages
    assert [m for m in messages if WARNING in m] == [
        "step 4: 8.0% of samples copy a training image, over eval.memorised_max 5.0%; the model is starting to "
        "memorise. model-best.safetensors keeps the best model below it; stopping (eval.stop_on_memorised)"]
    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("eval/samples")] == [(2, 64.0), (4, 256.0)]
    assert [(e.step, round(e.value, 3)) for e in ea.Scalars("eval/memorised")] == [(2, 0.0), (4, 0.08)]


def test_stop_on_memorised_saves_and_exits_cleanly(tmp_path, scripted, capsys):
    out = tmp_path / "run"
    assert train(out, "eval.stop_on_memorised=true", "checkpoint.every_steps=5") == 0
    # The evaluation at step 6 copies: the look-back scores step 5's checkpoint (the one since step 4's
    # evaluation) with 256 samples (it copies too: the fake answers with step 6's scores), and nothing
    # is evaluated after the stop. (The first 256: step 4's 4 % measured again.)
    assert scripted == [0.5, 0.3, 0.1] and scripted.samples == [256, 256]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000005", "step-0000006"]
    state = json.loads((out / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["step"] == 6
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["stopping at step 6: memorisation over eval.memorised_max (eval.stop_on_memorised)",
                          "model-best.safetensors: step 4, KID 300.0 x1e-3; the 1 evaluation after it, in the last "
                          "2 steps (33% of the run), found no better one",
                          f"stopped at step 6: checkpoint saved in {out / 'checkpoints' / 'step-0000006'}"]
    assert (out / "model.safetensors").is_file()
    assert read_meta(out / "model-best.safetensors").extra["best"]["step"] == 4
    ea = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    assert [e.tensor_proto.string_val[0].decode() for e in ea.Tensors("eval/lookback/text_summary")] == [
        "looked back: 1 of the 1 checkpoints kept since step 4 scored, 256 samples each, against 2.5% copies "
        "(50% of eval.memorised_max); the oldest of them copies more: model-best stays"]


def test_time_share_spaces_evaluations_by_what_they_cost(tmp_path, scripted, monkeypatch):
    """eval.time_share: the next evaluation waits until it fits, with all before it, in the share of the time."""
    monkeypatch.setattr(loop, "FIRST_EVAL_AFTER_S", 0.0)
    common = ["optim.warmup_images=0", "eval.kid_every_steps=0", "eval.time_share=0.5"]
    scripted.monitor.seconds = 0.0  # free: every log step (5 of 8 steps) is due
    assert train(tmp_path / "free", *common) == 0
    assert len(scripted) == 2  # both log steps, 5 and 8
    scripted.clear()
    scripted.monitor.seconds = 1e6  # dear: after the first, none is due within the run but the last
    assert train(tmp_path / "dear", *common, "train.steps=20") == 0
    assert scripted == [0.5, 0.3]
    # The last step's evaluation is what model-best keeps (KID 0.3 < 0.5): without it, a run shorter
    # than its evaluations' spacing would keep the model of its first minute.
    assert read_meta(tmp_path / "dear" / "model-best.safetensors").extra["best"]["step"] == 20
    ea = EventAccumulator(str(tmp_path / "dear" / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("eval/kid")] == [5, 20]


def test_holdout_is_never_trained_on_and_listed(tmp_path, scripted):
    import hashlib

    out = tmp_path / "run"
    assert train(out, "eval.holdout=0.25") == 0
    fixture = ROOT / "tests" / "fixtures" / "emoji-faces-32"
    files = sorted(p.name for p in fixture.iterdir() if p.suffix == ".png")
    expected = sorted(sorted(files, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:8])
    held = scripted.seen["heldout"]
    assert [Path(n).name for n in held.names] == expected
    assert held.images.shape == (8, 3, 16, 16) and held.images.dtype == torch.uint8
    trained_on = [Path(n).name for n in scripted.seen["train_names"]]
    assert len(trained_on) == 24 and not set(trained_on) & set(expected)
    listed = (out / "heldout.txt").read_text().splitlines()
    assert listed[0].startswith("# 8 images held out from training (0.25 of ")
    assert [Path(n).name for n in listed[1:]] == expected


def spaced_run(setup_s: float, charge_by_progress: bool, hours: float = 8.0, share: float = 0.03,
               measure_s: float = 5.0, log_every_s: float = 10.0) -> tuple[list[float], float]:
    """When BestModel evaluates over a run of `hours`, logging every log_every_s, when its first
    evaluation pays a one-off set-up of setup_s and each takes measure_s (a fake clock): the
    evaluations' start times and their total seconds. Progress runs with the clock."""
    from types import SimpleNamespace

    from xurdif.recipe import load_recipe
    from xurdif.train.best import BestModel
    from xurdif.train.state import RunState

    recipe = load_recipe(FIXTURE_RECIPE, [f"eval.time_share={share}", "eval.kid_every_steps=0",
                                          "optim.warmup_images=0"])
    length = hours * 3600
    now = [0.0]

    class Monitor:
        seconds, picture, ready = None, None, False

        def __call__(self, ema, schedule, meta):
            now[0] += measure_s + (0.0 if self.ready else setup_s)
            self.ready, self.seconds = True, measure_s
            return {"kid": 0.5, "memorised": 0.0}

    quiet = SimpleNamespace(log_eval=lambda *a: None, write_closest=lambda *a: None, log_text=lambda *a: None)
    acc = SimpleNamespace(is_main_process=True, num_processes=1, wait_for_everyone=lambda: None)
    progress = (lambda: min(1.0, now[0] / length)) if charge_by_progress else (lambda: 1.0)
    best = BestModel(recipe, RunState(), quiet, acc, born=0.0, first_after=60.0, monitor=Monitor,
                     export=lambda *a: None, clock=lambda: now[0], progress=progress)
    model = SimpleNamespace(ema=None, schedule=None, meta=None)
    starts = []
    while now[0] < length:
        now[0] += log_every_s
        if best.due(log_step=True):
            starts.append(now[0])
            best.evaluate(model)
    return starts, best.seconds


def test_time_share_charges_the_one_off_setup_as_the_run_goes():
    """A 70 s set-up (700 training images' features on a 2-core CPU) in an 8-hour run at 3 %: charged
    at once it held the second evaluation back 47 minutes; charged with the run's progress the
    evaluations are spaced by what they cost, and the whole run still spends at most its share."""
    at_once, spent_at_once = spaced_run(70.0, charge_by_progress=False)
    with_progress, spent = spaced_run(70.0, charge_by_progress=True)
    assert at_once[0] == with_progress[0] == 60.0  # the first: after a minute
    # At once: 75 + 2 x 5 <= 0.03 t from t = 2,834 s. With progress: 5 + 70 t / 28,800 + 10 <= 0.03 t
    # from t = 544 s.
    assert 2830 <= at_once[1] <= 2850 and 540 <= with_progress[1] <= 560
    # Both fit as many evaluations into the run; charged with progress they come without the gap.
    gaps = lambda starts: max(b - a for a, b in zip(starts, starts[1:]))
    assert gaps(at_once) > 2700 and gaps(with_progress) < 500
    length = 8 * 3600
    assert spent / length <= 0.03 and spent_at_once / length <= 0.03
    assert spent / length > 0.029  # the share is used, not wasted
    # Without a set-up both rules are the same rule.
    assert spaced_run(0.0, True, hours=1.0) == spaced_run(0.0, False, hours=1.0)


def test_a_stop_request_ends_the_sampler_choice_after_the_candidate_in_hand(tmp_path, monkeypatch, capsys):
    """The end-of-run choice takes minutes on a CPU; a SIGTERM or first Ctrl-C during it was held until
    it ended. Now it ends after the current candidate and the files keep the sampler they had."""
    from types import SimpleNamespace

    import xurdif.sampling.choose as choose
    from xurdif.recipe import load_recipe
    from xurdif.train.choose_sampler import choose_default_sampler

    for name in ("model.safetensors", "model-best.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    measured, reports, flag = [], [], {"stop": False}

    def fake_choose(path, *a, after_each, **k):
        for candidate in range(3):
            measured.append((path.name, candidate))
            after_each()
        return SimpleNamespace(describe=lambda: "ddim 10"), []

    monkeypatch.setattr(choose, "choose_for_file", fake_choose)
    monitor = SimpleNamespace(reference=lambda: (None, "ref"), extractor=None)
    trainer = SimpleNamespace(r=load_recipe(FIXTURE_RECIPE), best=SimpleNamespace(monitor=lambda: monitor),
                              out=SimpleNamespace(run_dir=tmp_path, write_report=lambda: reports.append(1)),
                              acc=SimpleNamespace(device="cpu"))
    assert choose_default_sampler(trainer, lambda: flag["stop"]) is True
    assert len(measured) == 6 and len(reports) == 6
    measured.clear()
    reports.clear()

    def stop_after_first():
        flag["stop"] = len(measured) >= 1
        return flag["stop"]

    assert choose_default_sampler(trainer, stop_after_first) is False
    assert measured == [("model.safetensors", 0)] and reports == [1]  # no more candidates, model-best untouched
    said = capsys.readouterr().out
    assert "stop requested: sampler choice ended; model.safetensors and the files after it keep" in said


def test_the_best_models_summary_says_how_long_nothing_beat_it():
    state = RunState(step=1000, best_kid=0.0215, best_step=250, evals_since_best=7)
    assert best_summary(state) == ("model-best.safetensors: step 250, KID 21.5 x1e-3; the 7 evaluations after it, "
                                   "in the last 750 steps (75% of the run), found no better one")
    assert best_summary(RunState(step=1000, best_kid=0.0215, best_step=1000)) == \
        "model-best.safetensors: step 1000, KID 21.5 x1e-3, the last evaluation"
    # A checkpoint from before the step was recorded: the count still means something.
    assert best_summary(RunState(step=1000, best_kid=0.0215, evals_since_best=1)) == \
        "model-best.safetensors: an earlier step, KID 21.5 x1e-3; the 1 evaluation after it found no better one"
    assert best_summary(RunState(step=1000)) is None
    # Saved and read back, as a resume does: the count goes on from where it was.
    assert RunState.from_dict(state.to_dict()).evals_since_best == 7


def test_thin_keeps_the_newest_and_an_even_spread_of_checkpoints_arriving_one_by_one():
    from xurdif.train.lookback import thin

    assert thin(list(range(1, 6)), 8, 0, int) == [1, 2, 3, 4, 5]
    assert thin(list(range(1, 11)), 8, 0, int) == [2, 4, 5, 6, 7, 8, 9, 10]  # the older go first on a tie
    # As in training: a checkpoint every 500 steps after a clean evaluation at step 720, pruned to
    # the kept ones plus the new one at each save, for 40,000 steps (an hours-long gap between two
    # evaluations). The widest gap the look-back could not see into stays under twice the even
    # spacing (halving left one of 34,000 steps: 1,000, then 35,000-39,500).
    kept = []
    for step in range(1000, 40001, 500):
        kept = thin(kept + [step], 8, 720, int)
    assert len(kept) == 8 and kept[-1] == 40000
    gaps = [b - a for a, b in zip([720] + kept, kept)]
    assert max(gaps) < 2 * (40000 - 720) / 8, kept


@pytest.mark.parametrize("onset", range(0, 8))
def test_newest_under_finds_the_last_item_before_the_onset_by_bisection(onset):
    from xurdif.train.lookback import newest_under

    items = list(range(1, 8))  # copies from item `onset` + 1 on (none under the limit when onset is 0)
    measured = []

    def memorised(i):
        measured.append(i)
        return 0.0 if i <= onset else 0.5

    got = newest_under(items, memorised, 0.02)
    assert got == (None if onset == 0 else onset)
    assert len(measured) <= 3 and len(set(measured)) == len(measured)  # log2(7) + 1, none twice


@pytest.mark.parametrize("step13_copies", [False, True])
def test_first_memorisation_looks_back_at_the_checkpoints_since_the_last_clean_evaluation(
        tmp_path, monkeypatch, capsys, caplog, step13_copies):
    """Evaluations at steps 8 (no copy) and 16 (copies): the checkpoints of steps 9-15 are kept
    though keep_last is 1, scored by bisection (12, 14, 13 when copying begins after step 13), and
    step 13's weights become model-best; afterwards they are pruned as usual. When step 13 shows 3 %
    copies (under the 5 % limit, over the look-back's half of it), step 12 is the newest under it. The
    look-back draws four times the evaluations' samples."""
    caplog.set_level(logging.INFO, logger="xurdif.train")
    out = tmp_path / "run"
    seen = []
    best = 12 if step13_copies else 13

    class ByWeights:
        seconds = 0.0

        def __init__(self, recipe, data, device, heldout):
            self.picture = torch.zeros((3, 4, 8), dtype=torch.uint8)

        def __call__(self, ema, schedule, meta, samples=None):
            ours = ema.state_dict()
            step = None
            for path in sorted((out / "checkpoints").glob("step-*")):
                theirs = load_file(path / "ema.safetensors")
                if all(torch.equal(ours[k].cpu(), theirs[k]) for k in theirs):
                    step = int(path.name[5:])
            step = step or {0: 8, 1: 16}[sum(s in (8, 16) for s in seen)]  # a live evaluation: no checkpoint yet
            seen.append((step, samples) if samples else step)
            self.picture = torch.full((3, 4, 8), step, dtype=torch.uint8)
            memo = 0.03 if step == 13 and step13_copies else 0.0 if step <= 13 else 0.5
            return {"kid": 1.0 / step, "kid_std": 0.01, "memorised": memo}

    monkeypatch.setattr(loop, "KidMonitor", ByWeights)
    assert launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", "train.steps=16", "eval.kid_every_steps=8",
                        "checkpoint.every_steps=1", "checkpoint.keep_last=1"]) == 0
    assert seen == [8, 16, (12, 256), (14, 256), (13, 256)]
    assert read_meta(out / "model-best.safetensors").extra["best"] == {
        "step": best, "kid": 1 / best, "kid_std": 0.01, "memorised": 0.0, "samples": 256.0}
    state = json.loads((out / "checkpoints" / "step-0000016" / "state.json").read_text())
    assert (state["best_step"], state["clean_step"], state["evals_since_best"]) == (best, 8, 1)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000016"]
    assert torch.from_numpy(np.array(Image.open(out / "eval" / "closest-best.png"))).unique().tolist() == [best]
    assert capsys.readouterr().out.splitlines()[-2].startswith(
        f"model-best.safetensors: step {best}, KID {1e3 / best:.1f} x1e-3; the 1 evaluation after it")
    assert (f"<li>model-best.safetensors: step {best} (a checkpoint scored by the look-back), KID "
            f"{1 / best:.4g}, memorised 0.0% of 256 samples</li>") in (out / "report.html").read_text()
    ea = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    text = ea.Tensors("eval/lookback/text_summary")
    assert [e.step for e in text] == [16]
    assert text[0].tensor_proto.string_val[0].decode() == (
        "looked back: 3 of the 7 checkpoints kept since step 8 scored, 256 samples each, against 2.5% copies (50% "
        f"of eval.memorised_max); step {best} is the newest under it (0.0%), KID {1e3 / best:.1f} x1e-3: "
        "now model-best")
    assert text[0].tensor_proto.string_val[0].decode() in caplog.messages  # the log says it too


def test_the_second_measurement_cuts_how_often_a_4_percent_copier_passes_as_the_readme_says():
    """README: with the hour recipes' settings a model that copies 4 % of the time shows at most one copy
    in 64 samples 27 % of the time, and passes 10 % of the time once four times the samples must confirm."""
    from math import ceil, comb

    from xurdif.recipe.load import load_recipe
    from xurdif.train.best import CONFIRM_SAMPLES

    e, p = load_recipe(ROOT / "recipes" / "watercolor.yaml").eval, 0.04
    assert e == load_recipe(ROOT / "recipes" / "small-data.yaml").eval
    n, big = e.kid_samples, e.kid_samples * CONFIRM_SAMPLES

    def fewer_than(below, draws):  # P(fewer than `below` copies in `draws` samples)
        return sum(comb(draws, k) * p ** k * (1 - p) ** (draws - k) for k in range(max(0, ceil(below))))

    def exactly(k):
        return fewer_than(k + 1, n) - fewer_than(k, n)

    alone = fewer_than(e.memorised_max * n, n)  # what one measurement lets through: 0 or 1 copy
    # 0 copies passes at once; 1 only if the bigger draw (the same first samples and more) stays under.
    confirmed = exactly(0) + sum(exactly(k) * fewer_than(e.memorised_max * big - k, big - n)
                                 for k in range(1, ceil(e.memorised_max * n)))
    assert (round(alone, 2), round(confirmed, 2)) == (0.27, 0.10)
