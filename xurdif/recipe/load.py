"""Loading recipes: YAML (safe, duplicate keys refused) merged over `base:` recipes and `a.b=c`
command-line overrides, then validated as a whole against the schema so that
every error is reported, with file, dotted key and a suggestion, before any work
starts."""
from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path
from typing import Any

import yaml

from .. import yamlfile
from ..options import Problem, convert, describe_type, leaf_keys
from ..wording import Voice, say, suggest_key
from ..shown import shown
from .duration import parse_duration
from .schema import Recipe, RecipeError

# ---------------------------------------------------------------- YAML merging


def _read_yaml(path: Path, problems: list[str]) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        problems.append(f"{path}: recipe file not found")
        return {}
    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problems.append(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
        return {}
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(path: Path, problems: list[str], chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        problems.append(f"{path}: base: circular inheritance ({' -> '.join(p.name for p in chain + (path,))})")
        return {}
    data = _read_yaml(path, problems)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        problems.append(f"{path}: base: must be a path to another recipe, got {shown(base)}")
        return data
    base_path = (path.parent / base)
    if not base_path.is_file():
        problems.append(f"{path}: base: {base} not found (looked for {base_path})")
        return data
    return _deep_merge(_load_with_bases(base_path, problems, chain + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError([f"override {text!r}: expected section.key=value, e.g. train.images=5000"])
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yamlfile.load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError([f"override {key.strip()}: invalid YAML value {shown(value)}: "
                           f"{getattr(e, 'problem', None) or e}"]) from None


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError([f"override {'.'.join(keys)}: {k} is not a section"])
    node[keys[-1]] = value


# ---------------------------------------------------------------- validation


# Key first, as the file has it: "train.images: got True; expected an integer or null".
RECIPE = Voice(unknown="{key}: unknown key{hint}", choice="{key}: got {value}; expected {expected}{hint}",
               type="{key}: got {value}; expected {expected}", invalid="{key}: {message}",
               range="{key}: {value} is out of range; allowed {lo} to {hi}", hint="; {}", quote=False)


def _say(p: Problem, where: str, valid: list[str]) -> str:
    """A recipe problem in one line: file, dotted key, what would be valid."""
    if p.kind == "mapping" and not p.key:
        p = dataclasses.replace(p, key="recipe")
    if p.kind == "unknown":
        p = _near(p.key, valid)
    return f"{where}: {say(p, RECIPE)}"


def _near(dotted: str, valid: list[str]) -> Problem:
    """An unknown key, hinting at the closest valid one in any section (a key is often
    put in the wrong one)."""
    near = suggest_key(dotted, valid)
    return Problem(dotted, "unknown", hint=(near,) if near else ())


def _build(data: Any, where: str, valid: list[str], problems: list[str]) -> Recipe:
    values, found = convert(Recipe, data)
    problems += [_say(p, where, valid) for p in found]
    return Recipe(**values)


def _check_consistency(r: Recipe, where: str, problems: list[str]) -> None:
    lengths = [k for k in ("images", "steps", "time") if getattr(r.train, k) is not None]
    if not lengths:
        problems.append(f"{where}: train.images: set the training length "
                        "(train.images, train.steps or train.time)")
    if len(lengths) > 1:
        problems.append(f"{where}: train.{lengths[1]}: set one of train.images, train.steps or train.time, "
                        f"not {' and '.join('train.' + k for k in lengths)}")
    if r.train.time is not None:
        try:
            parse_duration(r.train.time)
        except ValueError as e:
            problems.append(f"{where}: train.time: {e}")
    if r.data.source == "folder" and not r.data.path:
        problems.append(f"{where}: data.path: required for data.source: folder")
    if r.data.source == "hf" and not r.data.hf_dataset:
        problems.append(f"{where}: data.hf_dataset: required for data.source: hf")
    if r.data.source == "shards" and not r.data.shards:
        problems.append(f"{where}: data.shards: required for data.source: shards")
    terms = ("l2", "l1", "edge_l1", "ssim", "ms_ssim")
    if not any(getattr(r.loss, k) > 0 for k in terms):
        problems.append(f"{where}: loss: every term weight is 0; give one of {', '.join(terms)} a weight > 0")
    if r.loss.ms_ssim > 0 and r.data.size < 161:
        problems.append(f"{where}: loss.ms_ssim: needs data.size >= 161 (five scales), got {r.data.size}; use loss.ssim")
    if r.eval.holdout and r.eval.holdout_path:
        problems.append(f"{where}: eval.holdout_path: set eval.holdout or eval.holdout_path, not both")
    if r.eval.holdout and r.data.source == "shards":
        problems.append(f"{where}: eval.holdout: shards cannot set images aside; give a folder of held-out "
                        "images as eval.holdout_path")
    if (r.eval.holdout or r.eval.holdout_path) and not (r.eval.kid_every_steps or r.eval.time_share):
        key = "holdout" if r.eval.holdout else "holdout_path"
        problems.append(f"{where}: eval.{key}: only the in-training evaluation uses held-out images; turn it "
                        "on with eval.time_share (e.g. 0.03) or eval.kid_every_steps, or remove the key")
    if len(r.optim.betas) != 2 or not all(0 <= b < 1 for b in r.optim.betas):
        problems.append(f"{where}: optim.betas: expected two numbers in [0, 1), got {r.optim.betas}")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, inherit, override and validate; raise RecipeError listing every problem."""
    path = Path(path)
    problems: list[str] = []
    data = _load_with_bases(path, problems)
    if problems:
        raise RecipeError(problems)
    valid = leaf_keys(Recipe)
    for text in overrides:
        keys, value = parse_override(text)
        dotted = ".".join(keys)
        if dotted not in valid and not any(v.startswith(dotted + ".") for v in valid):
            problems.append(f"override {say(_near(dotted, valid), RECIPE)}")
            continue
        _apply_override(data, keys, value)
    data.setdefault("name", path.stem)
    recipe = _build(data, str(path), valid, problems)
    if not problems:
        _check_consistency(recipe, str(path), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def recipe_from_yaml(text: str, where: str = "recipe") -> Recipe:
    problems: list[str] = []
    recipe = _build(yaml.safe_load(text) or {}, where, leaf_keys(Recipe), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(recipe_to_yaml(recipe).encode()).hexdigest()[:16]


def describe_keys() -> str:
    """Every key with its default and meaning, for --help and the README."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                walk(t, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = describe_type(t, f.metadata)
            lines.append(f"  {prefix}{f.name} = {default!r}  ({kind}) {f.metadata.get('doc', '')}")

    walk(Recipe, "")
    return "\n".join(lines)
