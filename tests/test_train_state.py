"""The run's state as checkpoints record it, the keys a resume may change, and the time
budget's arithmetic, without training."""
import pytest

from xurdif.recipe import load_recipe
from xurdif.train.budget import PROBE_TOTAL, TimeBudget
from xurdif.train.cli import SAFE_TO_CHANGE
from xurdif.train.outputs import scalar_tag
from xurdif.train.state import RunState

RECIPE = "tests/recipes/fixture.yaml"
# state.json's keys: checkpoints on disk hold these names, so they must not change.
KEYS = {"step", "images_seen", "global_batch", "world_size", "recipe_hash", "nonfinite_total", "seconds", "best_kid",
        "best_step", "evals_since_best", "memorised_warned", "first_copy_step", "clean_step", "time_budget_s",
        "total_images", "noise_draws", "recipe"}


def test_state_keeps_its_keys_and_reads_older_checkpoints():
    r = load_recipe(RECIPE)
    now = RunState.fresh(r, 8, 1)
    assert set(now.to_dict()) == KEYS
    old = RunState.from_dict({"step": 10, "images_seen": 80, "global_batch": 8, "world_size": 2, "recipe_hash": "x"})
    now.nonfinite_in_row = 3
    now.resume(old, "ckpt")
    assert (now.step, now.images_seen, now.seconds, now.best_kid, now.total_images) == (10, 80, 0.0, None, None)
    assert (now.best_step, now.evals_since_best, now.clean_step) == (None, 0, None)
    assert now.nonfinite_in_row == 0  # a resumed run starts a new streak
    assert now.world_size == 1 and now.recipe_hash != "x"  # the resuming session's facts
    with pytest.raises(ValueError, match="global batch of 16"):
        RunState.fresh(r, 8, 1).resume(RunState.from_dict({"global_batch": 16}), "ckpt")


def test_safe_keys_come_from_the_schema():
    assert {"name", "train.compile", "log.every_steps", "checkpoint.keep_last", "samples.n"} <= set(SAFE_TO_CHANGE)
    assert not {"model.base_width", "sampling.choose", "eval.kid_every_steps"} & set(SAFE_TO_CHANGE)


def test_loss_terms_log_under_loss_the_rest_under_train():
    assert [scalar_tag(n) for n in ("total", "l2", "ms_ssim", "lr", "time_left_s")] == [
        "loss/total", "loss/l2", "loss/ms_ssim", "train/lr", "train/time_left_s"]


def test_time_budget_measures_fixes_and_records_its_length():
    r = load_recipe(RECIPE, ["train.steps=null", "train.time=60s", "train.time_probe_steps=2"])
    b = TimeBudget(r, 8, born=0.0)
    assert b.measuring and b.total == PROBE_TOTAL and not b.measured()
    b.start(0.0, 0)
    assert b.due(1.0, 8, 1) is None and b.probe == (1.0, 8, 1)  # the first step pays for warm-up
    assert b.due(2.0, 16, 2) == "measure" and b.speed(b.probe, 2.0, 16, 2) is None  # one step is not enough
    speed = b.speed(b.probe, 3.0, 24, 3)
    assert speed == 8.0
    b.fix(400, speed, 24, again=False)
    assert b.steps == 50 and b.measured()
    state = RunState()
    b.record(state, 10.0)
    assert (state.seconds, state.time_budget_s, state.total_images) == (10.0, 60.0, 400)
    again = TimeBudget(r, 8, born=100.0)
    again.resume(state)
    assert again.total == 400 and again.left(110.0) == 40.0  # 10 s used before, 10 s in this session


def test_session_done_is_the_share_of_this_sessions_images():
    r = load_recipe(RECIPE, ["train.steps=null", "train.images=800"])
    b = TimeBudget(r, 8, born=0.0)
    b.start(0.0, 0)
    assert [b.session_done(n) for n in (0, 200, 800, 1600)] == [0.0, 0.25, 1.0, 1.0]
    b.start(5.0, 400)  # a resumed session: its own images count, from where it began
    assert [b.session_done(n) for n in (400, 600, 800)] == [0.0, 0.5, 1.0]
    timed = TimeBudget(load_recipe(RECIPE, ["train.steps=null", "train.time=60s"]), 8, born=0.0)
    timed.start(0.0, 0)
    assert timed.measuring and timed.session_done(8) == 1.0  # nothing known of the rest yet: all of it charged
