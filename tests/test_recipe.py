import subprocess
import sys
from pathlib import Path

import pytest

from xurdif.recipe import RecipeError, load_recipe, recipe_from_yaml, recipe_hash, recipe_to_yaml

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL = "data: {path: tests/fixtures/emoji-faces-32}\ntrain: {images: 100}\n"


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    return e.value.problems


def test_minimal_recipe_gets_defaults(tmp_path):
    r = load_recipe(write(tmp_path, "mini.yaml", MINIMAL))
    assert r.name == "mini"
    assert r.model.preset == "small" and r.diffusion.prediction == "eps" and r.loss.l2 == 1.0
    assert r.run_dir == Path("runs/mini")


def test_typo_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "t.yaml", MINIMAL + "optim: {lrr: 0.1}\n")
    assert problems(p) == [f"{p}: optim.lrr: unknown key; did you mean optim.lr?"]


def test_key_in_wrong_section_suggests_the_right_one(tmp_path):
    p = write(tmp_path, "t.yaml", "data: {path: x}\ntrain: {images: 100, lrr: 0.1}\n")
    assert problems(p) == [f"{p}: train.lrr: unknown key; did you mean optim.lr?"]


def test_wrong_type_and_range_and_choice_all_reported_at_once(tmp_path):
    p = write(tmp_path, "t.yaml", "data: {path: x}\ntrain: {images: 100, batch_size: many}\n"
              "optim: {lr: -1}\ndiffusion: {prediction: noise}\n")
    got = problems(p)
    assert f"{p}: train.batch_size: got 'many'; expected an integer" in got
    assert f"{p}: optim.lr: -1.0 is out of range; allowed 0.0 to 1.0" in got
    assert f"{p}: diffusion.prediction: got 'noise'; expected one of 'eps', 'x0', 'v', 'edm'" in got
    assert len(got) == 3


def test_int_accepted_for_float_but_bool_is_not_int(tmp_path):
    r = load_recipe(write(tmp_path, "t.yaml", MINIMAL + "optim: {lr: 1}\n"))
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)
    assert load_recipe(write(tmp_path, "e.yaml", MINIMAL + "optim: {lr: 1e-3}\n")).optim.lr == 0.001
    p = write(tmp_path, "u.yaml", "data: {path: x}\ntrain: {images: true}\n")
    assert problems(p) == [f"{p}: train.images: got True; expected an integer or null"]


def test_length_is_required_and_exclusive(tmp_path):
    p = write(tmp_path, "t.yaml", "data: {path: x}\n")
    assert "train.images: set the training length" in problems(p)[0]
    p = write(tmp_path, "u.yaml", "data: {path: x}\ntrain: {images: 5, steps: 5}\n")
    assert problems(p) == [f"{p}: train.steps: set one of train.images, train.steps or train.time, "
                           "not train.images and train.steps"]
    p = write(tmp_path, "v.yaml", "data: {path: x}\ntrain: {steps: 5, time: 30m}\n")
    assert problems(p) == [f"{p}: train.time: set one of train.images, train.steps or train.time, "
                           "not train.steps and train.time"]


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("8h", 28800), ("1h30m", 5400),
                                          ("1h30m15s", 5415), ("2.5m", 150)])
def test_time_budget_durations(tmp_path, text, seconds):
    from xurdif.recipe.duration import parse_duration

    assert parse_duration(text) == seconds
    assert load_recipe(write(tmp_path, "t.yaml", f"data: {{path: x}}\ntrain: {{time: {text}}}\n")).train.time == text


@pytest.mark.parametrize("text", ["30", "30x", "m30", "30m1h", "1h1h", "0s", ""])
def test_bad_time_budget_is_one_line(tmp_path, text):
    p = write(tmp_path, "t.yaml", f"data: {{path: x}}\ntrain: {{time: '{text}'}}\n")
    msg = f"{p}: train.time: {text!r} is not a duration; expected e.g. 90s, 30m, 8h or 1h30m"
    if text == "0s":
        msg = f"{p}: train.time: '0s': the duration must be longer than 0"
    assert problems(p) == [msg]


def test_held_out_images_need_an_evaluation_and_one_source(tmp_path):
    p = write(tmp_path, "h.yaml", MINIMAL)
    assert problems(p, ["eval.holdout=0.1"]) == [
        f"{p}: eval.holdout: only the in-training evaluation uses held-out images; turn it on with "
        "eval.time_share (e.g. 0.03) or eval.kid_every_steps, or remove the key"]
    assert problems(p, ["eval.holdout=0.1", "eval.holdout_path=x", "eval.time_share=0.03"]) == [
        f"{p}: eval.holdout_path: set eval.holdout or eval.holdout_path, not both"]
    shards = write(tmp_path, "s.yaml", "data: {source: shards, shards: a.tar}\ntrain: {images: 100}\n")
    assert problems(shards, ["eval.holdout=0.1", "eval.time_share=0.03"]) == [
        f"{shards}: eval.holdout: shards cannot set images aside; give a folder of held-out images as "
        "eval.holdout_path"]
    assert problems(p, ["eval.holdout=0.9", "eval.time_share=0.03"]) == [
        f"{p}: eval.holdout: 0.9 is out of range; allowed 0.0 to 0.5"]
    r = load_recipe(p, ["eval.holdout=0.1", "eval.time_share=0.03"])
    assert r.eval.holdout == 0.1 and r.eval.time_share == 0.03


def test_holdout_too_small_warns_and_holds_nothing_out(caplog):
    from xurdif.data import open_dataset
    from xurdif.data.holdout import set_aside
    from xurdif.recipe import DataCfg

    data = open_dataset(DataCfg(path="tests/fixtures/emoji-faces-32", size=16))
    assert set_aside(data, 0.1) is None
    assert len(data) == 32  # nothing taken out
    assert [r.getMessage() for r in caplog.records if "eval.holdout" in r.getMessage()] == [
        "eval.holdout: 0.1 of 32 images is 3, fewer than 8: nothing is held out; KID is measured against the "
        "training images and copies are still caught (give eval.holdout_path for a folder of other images "
        "of the kind)"]


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", MINIMAL + "model: {preset: tiny}\noptim: {lr: 0.01}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\noptim: {warmup_images: 50}\n")
    r = load_recipe(child, ["optim.lr=0.003", "model.mults=[1,2]"])
    assert r.name == "child"
    assert r.model.preset == "tiny" and r.optim.lr == 0.003 and r.optim.warmup_images == 50
    assert r.model.mults == [1, 2] and r.train.images == 100


def test_bad_base_and_bad_override(tmp_path):
    p = write(tmp_path, "c.yaml", "base: nowhere.yaml\n")
    assert problems(p) == [f"{p.resolve()}: base: nowhere.yaml not found (looked for {tmp_path.resolve()}/nowhere.yaml)"]
    p = write(tmp_path, "d.yaml", MINIMAL)
    assert problems(p, ["train.imagez=3"]) == ["override train.imagez: unknown key; did you mean train.images?"]


def test_circular_base(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    b = write(tmp_path, "b.yaml", "base: a.yaml\n")
    assert "circular inheritance" in problems(b)[0]


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "t.yaml", "data:\n  path: [unclosed\n")
    got = problems(p)
    assert got[0].startswith(f"{p}: line ") and "invalid YAML" in got[0]


def test_yaml_round_trip_and_hash(tmp_path):
    r = load_recipe(write(tmp_path, "t.yaml", MINIMAL))
    again = recipe_from_yaml(recipe_to_yaml(r))
    assert again == r and recipe_hash(again) == recipe_hash(r)
    assert recipe_hash(load_recipe(write(tmp_path, "t.yaml", MINIMAL), ["optim.lr=0.5"])) != recipe_hash(r)


def run_launch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_passes_check(recipe):
    res = run_launch(f"recipes/{recipe}", "--check")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"recipes/{recipe}: OK"


def test_check_reports_errors_with_exit_2(tmp_path):
    p = write(tmp_path, "bad.yaml", MINIMAL + "model: {preset: huge}\n")
    res = run_launch(str(p), "--check")
    assert res.returncode == 2
    assert f"{p}: model.preset: got 'huge'; expected one of 'tiny', 'small', 'base', 'large'" in res.stderr


def test_demo_recipe_dry_run():
    res = run_launch("recipes/demo.yaml", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "dataset: 169 images" in res.stdout
    assert "model: xurdif_unet," in res.stdout and "parameters" in res.stdout
    assert "preset: tiny" in res.stdout


def test_missing_dataset_is_a_clear_error_before_training(tmp_path):
    p = write(tmp_path, "t.yaml", f"data: {{path: {tmp_path}/nothing}}\ntrain: {{images: 10}}\n")
    res = run_launch(str(p), "--dry-run")
    assert res.returncode == 2
    assert "nothing" in res.stderr and "Traceback" not in res.stderr


def test_patch_size_key_reaches_the_network(tmp_path):
    from xurdif.train.network import recipe_net_config

    p = write(tmp_path, "p.yaml", MINIMAL + "model: {preset: tiny}\n")
    assert recipe_net_config(load_recipe(p))["patch_size"] == 2  # the preset's
    config = recipe_net_config(load_recipe(p, ["model.patch_size=1", "model.base_width=20"]))
    assert config["patch_size"] == 1 and config["base_width"] == 20
    assert problems(p, ["model.patch_size=0"]) == [f"{p}: model.patch_size: 0 is out of range; allowed 1 to 8"]


def test_recipe_sampler_and_spacing_choices_are_the_samplers():
    import typing

    from xurdif.diffusion.samplers import SAMPLERS
    from xurdif.diffusion.spacing import SPACINGS
    from xurdif.recipe.schema import SamplesCfg, SamplingCfg

    hints = lambda cls: typing.get_type_hints(cls)
    assert typing.get_args(hints(SamplingCfg)["sampler"]) == tuple(SAMPLERS)
    assert typing.get_args(hints(SamplesCfg)["sampler"]) == ("auto", *SAMPLERS)
    # "fitted" needs a curve the recipe cannot give: it comes from sampling.fit.
    assert typing.get_args(hints(SamplingCfg)["spacing"]) == tuple(s for s in SPACINGS if s != "fitted")
