"""bench/quality.py checks each variant's recipe before training with the overrides its
run gets, so a variant that changes the run's length is judged as it will run."""
import importlib.util
from pathlib import Path

import pytest

from xurdif.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def recipe_of(quality, argv, variant):
    args = quality.build_parser().parse_args(argv)
    return load_recipe(args.recipe, quality.run_overrides(args, variant))


def test_variant_length_over_a_timed_recipe(quality):
    small = ["--recipe", str(ROOT / "recipes" / "small-data.yaml"), "--size", "64"]
    # small-data.yaml trains for train.time: 30m; --images replaces that budget ...
    r = recipe_of(quality, [*small, "--images", "16000"], [])
    assert (r.train.images, r.train.time, r.data.size) == (16000, None, 64)
    # ... and a variant may set its own length on top (this one was refused before training).
    r = recipe_of(quality, [*small, "--images", "16000"], ["train.images=32000"])
    assert (r.train.images, r.train.time) == (32000, None)
    r = recipe_of(quality, [*small, "--minutes", "10"], ["optim.lr=4e-3"])
    assert (r.train.images, r.train.time, r.optim.lr) == (None, "600s", 4e-3)
    assert r.samples.every_steps == 0 and r.log.tensorboard is False  # the bench's own overrides
    assert (r.eval.time_share, r.eval.holdout) == (0.0, 0.0)  # it scores afterwards, on every image
    with pytest.raises(RecipeError, match="optim.lr"):
        recipe_of(quality, small, ["optim.lr=-1"])
