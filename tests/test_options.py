"""Options as people write them: every choice written bare (YAML 1.1 reads
no/off/yes/on as booleans), in recipe files, overrides, job files, prompt
lines and guidance blocks; duplicate YAML keys; top-level typos."""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import pytest
import yaml

from xurdif.guidance import GuidanceCfg, parse_guidance
from xurdif.options import convert
from xurdif.recipe import Recipe, RecipeError, load_recipe
from xurdif.render.job_files import load_jobs, parse_prompts_text
from xurdif.render.jobs import Job, JobError


def fields_where(cls: type, want, prefix: str = "") -> list[tuple[str, typing.Any, typing.Mapping]]:
    """(dotted key, type, metadata) of every (nested) field whose type passes `want`."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += fields_where(t, want, f"{prefix}{f.name}.")
        elif want(t, f.metadata):
            out.append((prefix + f.name, t, f.metadata))
    return out


def choices(t, md) -> tuple:
    if md.get("choices"):
        return tuple(md["choices"])
    args = [t] + list(typing.get_args(t))
    return next((typing.get_args(a) for a in args if typing.get_origin(a) is Literal), ())


def pairs(cls: type) -> list[tuple[str, str]]:
    return [(key, c) for key, t, md in fields_where(cls, lambda t, md: choices(t, md)) for c in choices(t, md)]


RECIPE_CHOICES = pairs(Recipe)
# Enough for every data.source to pass the consistency checks.
BASE = {"data": {"path": "x", "hf_dataset": "y", "shards": "z"}, "train": {"images": 100}}


def test_the_schema_has_choices_that_yaml_reads_as_booleans():
    # Otherwise the tests below would prove nothing about YAML 1.1.
    assert ("train.mixed_precision", "no") in RECIPE_CHOICES and ("ema.kind", "off") in RECIPE_CHOICES
    assert len({k for k, _ in RECIPE_CHOICES}) >= 8


def recipe_text(key: str, bare: str) -> str:
    """BASE as YAML with `key` set to the word `bare`, unquoted."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    *sections, leaf = key.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[leaf] = "@@BARE@@"
    return yaml.safe_dump(data).replace("'@@BARE@@'", bare).replace("@@BARE@@", bare)


def get(obj, dotted: str):
    for k in dotted.split("."):
        obj = getattr(obj, k)
    return obj


@pytest.mark.parametrize("key", sorted({k for k, _ in RECIPE_CHOICES}))
def test_every_recipe_choice_is_accepted_bare_in_a_file_and_as_an_override(tmp_path, key):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    for k, choice in RECIPE_CHOICES:
        if k != key:
            continue
        p = tmp_path / "r.yaml"
        p.write_text(recipe_text(key, choice))
        assert f": {choice}\n" in p.read_text()  # really written bare
        assert get(load_recipe(p), key) == choice
        assert get(load_recipe(base, [f"{key}={choice}"]), key) == choice


@pytest.mark.parametrize("key", [k for k, _, _ in fields_where(Recipe, lambda t, md: t is bool)])
def test_bool_keys_accept_true_and_false(tmp_path, key):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    for word, value in (("true", True), ("false", False)):
        p = tmp_path / "r.yaml"
        p.write_text(recipe_text(key, word))
        assert get(load_recipe(p), key) is value
        assert get(load_recipe(base, [f"{key}={word}"]), key) is value


def test_any_case_yaml_reads_as_a_boolean(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(BASE))
    r = load_recipe(p, ["train.mixed_precision=NO", "ema.kind=Off"])
    assert (r.train.mixed_precision, r.ema.kind) == ("no", "off")


def test_a_boolean_is_still_refused_where_no_choice_is_spelled_so(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(recipe_text("diffusion.prediction", "no"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert e.value.problems == [f"{p}: diffusion.prediction: got False; expected one of 'eps', 'x0', 'v', 'edm'"]


@pytest.mark.parametrize("key,choice", pairs(GuidanceCfg))
def test_guidance_choices_bare(key, choice):
    assert getattr(parse_guidance(yaml.safe_load(f"{key}: {choice}")), key) == choice


@pytest.mark.parametrize("key,choice", pairs(Job))
def test_job_choices_bare_in_a_job_file_and_a_prompt_line(tmp_path, key, choice):
    f = tmp_path / "jobs.yaml"
    f.write_text(f"defaults: {{{key}: {choice}}}\njobs:\n  - a fox\n  - prompt: a hen\n    {key}: {choice}\n")
    jobs, errors, _ = load_jobs(f, Job())
    assert errors == [] and [getattr(j, key) for j in jobs] == [choice, choice]
    jobs, errors = parse_prompts_text(f"a fox | {key}={choice}", "p.txt", Job())
    assert errors == [] and getattr(jobs[0], key) == choice


@dataclasses.dataclass(frozen=True)
class Switches:
    mode: Literal["on", "off", "auto"] = "auto"
    answer: str = dataclasses.field(default="maybe", metadata={"choices": ("yes", "no", "maybe")})
    flag: bool = False


@pytest.mark.parametrize("text", [False, True])
def test_yaml_booleans_become_the_choice_written(text):
    raw = yaml.safe_load("mode: off\nanswer: yes\nflag: on\n")
    assert raw == {"mode": False, "answer": True, "flag": True}
    values, problems = convert(Switches, raw, text=text)
    assert problems == [] and values == {"mode": "off", "answer": "yes", "flag": True}
    values, problems = convert(Switches, {"mode": "On", "flag": "no"}, text=True)
    assert [p.kind for p in problems] == ["choice"] and values == {"flag": False}


# --- issue 13: duplicate keys, top-level typos, guidance errors with file:line ------


def test_duplicate_recipe_key_names_the_key_and_both_lines(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {path: x}\noptim:\n  lr: 0.1\n  eps: 1.0e-8\n  lr: 0.2\ntrain: {images: 10}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert e.value.problems == [f"{p}: line 5 invalid YAML: duplicate key 'lr' (first on line 3, "
                                f"again on line 5); keep one"]


def test_duplicate_job_file_key_names_the_key_and_both_lines(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("defaults:\n  steps: 3\n  steps: 5\njobs: [a]\n")
    with pytest.raises(JobError, match=r"jobs.yaml:3: invalid YAML: duplicate key 'steps' "
                                       r"\(first on line 2, again on line 3\)"):
        load_jobs(f, Job())


def test_unknown_top_level_key_suggests_a_section(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {path: x}\ntrian: {images: 10}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert f"{p}: trian: unknown key; did you mean train?" in e.value.problems


def test_override_with_invalid_yaml_is_one_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(BASE))
    with pytest.raises(RecipeError) as e:
        load_recipe(p, ["optim.betas=[0.9"])
    # libyaml's words (pyyaml's own parser says "expected ',' or ']', but got '<stream end>'").
    assert e.value.problems in (["override optim.betas: invalid YAML value '[0.9': did not find expected ',' or ']'"],
                                ["override optim.betas: invalid YAML value '[0.9': expected ',' or ']', "
                                 "but got '<stream end>'"])
