"""Loading recipes: YAML (yaml.safe_load) merged over `base:` recipes and `a.b=c`
command-line overrides, then validated as a whole against the schema so that
every error is reported, with file, dotted key and a suggestion, before any work
starts."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .schema import Recipe, RecipeError

# ---------------------------------------------------------------- YAML merging


def _read_yaml(path: Path, problems: list[str]) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        problems.append(f"{path}: recipe file not found")
        return {}
    try:
        data = yaml.safe_load(text)
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
        problems.append(f"{path}: base: must be a path to another recipe, got {base!r}")
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
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError([f"override {'.'.join(keys)}: {k} is not a section"])
    node[keys[-1]] = value


# ---------------------------------------------------------------- validation


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(dotted: str, valid: list[str]) -> str:
    section, _, leaf = dotted.rpartition(".")
    same = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    near = [same[m] for m in difflib.get_close_matches(leaf, list(same), n=1, cutoff=0.6)]
    if not near:  # maybe the key lives in another section
        by_leaf = {k.rpartition(".")[2]: k for k in valid}
        leaves = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        near = [by_leaf[leaves[0]]] if leaves else difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]}?" if near else ""


def _describe_type(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        null = " or null" if type(None) in typing.get_args(t) else ""
        return " or ".join(_describe_type(a) for a in args) + null
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(t)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def _coerce(t: Any, v: Any) -> tuple[bool, Any]:
    """(ok, value): check v against type t, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return type(None) in typing.get_args(t), None
        for a in typing.get_args(t):
            if a is not type(None):
                ok, out = _coerce(a, v)
                if ok:
                    return True, out
        return False, v
    if origin is Literal:
        return v in typing.get_args(t), v
    if origin is list:
        if not isinstance(v, list):
            return False, v
        items = [_coerce(typing.get_args(t)[0], x) for x in v]
        return all(ok for ok, _ in items), [x for _, x in items]
    if t is bool:
        return isinstance(v, bool), v
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if t is float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return True, float(v)
            except ValueError:
                return False, v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return ok, float(v) if ok else v
    if t is str:
        return isinstance(v, str), v
    return False, v


def _build(cls: type, data: Any, prefix: str, where: str, valid: list[str], problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where}: {prefix.rstrip('.') or 'recipe'}: must be a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            problems.append(f"{where}: {dotted}: unknown key{_suggest(dotted, valid)}")
            continue
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value if value is not None else {}, dotted + ".", where, valid, problems)
            continue
        ok, value = _coerce(t, value)
        if not ok:
            problems.append(f"{where}: {dotted}: got {value!r}; expected {_describe_type(t)}")
            continue
        md = names[key].metadata
        nums = value if isinstance(value, list) else [value]
        for x in nums:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if md.get("min") is not None and x < md["min"] or md.get("max") is not None and x > md["max"]:
                    lo = md.get("min") if md.get("min") is not None else "-inf"
                    hi = md.get("max") if md.get("max") is not None else "inf"
                    problems.append(f"{where}: {dotted}: {value!r} is out of range; allowed {lo} to {hi}")
                    break
        kwargs[key] = value
    return cls(**kwargs)


def _check_consistency(r: Recipe, where: str, problems: list[str]) -> None:
    if r.train.images is None and r.train.steps is None:
        problems.append(f"{where}: train.images: set the training length (train.images or train.steps)")
    if r.train.images is not None and r.train.steps is not None:
        problems.append(f"{where}: train.steps: set train.images or train.steps, not both")
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
    if len(r.optim.betas) != 2 or not all(0 <= b < 1 for b in r.optim.betas):
        problems.append(f"{where}: optim.betas: expected two numbers in [0, 1), got {r.optim.betas}")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, inherit, override and validate; raise RecipeError listing every problem."""
    path = Path(path)
    problems: list[str] = []
    data = _load_with_bases(path, problems)
    if problems:
        raise RecipeError(problems)
    valid = _all_keys(Recipe)
    for text in overrides:
        keys, value = parse_override(text)
        dotted = ".".join(keys)
        if dotted not in valid and not any(v.startswith(dotted + ".") for v in valid):
            problems.append(f"override {dotted}: unknown key{_suggest(dotted, valid)}")
            continue
        _apply_override(data, keys, value)
    data.setdefault("name", path.stem)
    recipe = _build(Recipe, data, "", str(path), valid, problems)
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
    recipe = _build(Recipe, yaml.safe_load(text) or {}, "", where, _all_keys(Recipe), problems)
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
            lines.append(f"  {prefix}{f.name} = {default!r}  ({_describe_type(t)}) {f.metadata.get('doc', '')}")

    walk(Recipe, "")
    return "\n".join(lines)
