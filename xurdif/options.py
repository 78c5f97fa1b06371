"""Typed options, once: raw values (YAML values of a recipe or job file, a
guidance block, a prompt line's `k=v` strings) become the typed fields of a
dataclass, checked against each field's type, choices and range, with "did you
mean" hints for unknown keys and choices.

`convert` reports `Problem`s instead of raising: a recipe lists every problem
at once, a job line or a guidance block stops at the first. `say` words a
problem in the `Voice` of the input it came from (xurdif/wording.py, with the
"did you mean" hints and `OptionError`, which carries the lines).

Choices are a field's `Literal[...]` arguments or its metadata `choices`;
ranges are its metadata `min` / `max` (see `opt`).

YAML 1.1, which pyyaml follows, reads yes/no/on/off as booleans, so a choice
written bare (`mixed_precision: no`, `ema.kind=off`) arrives as False or True.
A boolean given for a choice key takes the choice spelled by one of those
words, when the key has exactly one; the user wrote the choice, not a boolean.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

from .wording import close_matches

# The words YAML 1.1 reads as each boolean (pyyaml: yes/no/true/false/on/off;
# the spec adds y/n). Lower case: YAML also reads Yes, NO, Off, ...
YAML_BOOL_WORDS = {True: ("yes", "y", "on", "true"), False: ("no", "n", "off", "false")}
# Booleans written as text (a prompt line's k=v).
TEXT_BOOLS = {w: b for b, words in YAML_BOOL_WORDS.items() for w in words}
_INT_TEXT = re.compile(r"\s*-?\d{1,40}\s*")  # longer is no setting, and past 4300 digits int() raises


def opt(default: Any, **metadata: Any) -> Any:
    """A dataclass field with its default and what `convert` checks: `min` / `max`
    (inclusive; `min_open=True` leaves min itself out) and `choices`; `doc` says in
    a few words what the value means."""
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=metadata)
    return field(default=default, metadata=metadata)


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable dotted key of a (nested) dataclass."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += leaf_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# ---------------------------------------------------------------- types


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def choices_of(t: Any, metadata: typing.Mapping | None = None) -> tuple:
    """A field's choices: its Literal arguments (also inside Optional) or metadata `choices`."""
    if metadata and metadata.get("choices"):
        return tuple(metadata["choices"])
    if typing.get_origin(t) is Literal:
        return typing.get_args(t)
    if _is_union(t):
        for a in typing.get_args(t):
            if typing.get_origin(a) is Literal:
                return typing.get_args(a)
    return ()


def describe_type(t: Any, metadata: typing.Mapping | None = None) -> str:
    """What a value of type t looks like, in words ("one of 'no', 'fp16'", "an integer or null")."""
    if metadata and metadata.get("choices"):
        return "one of " + ", ".join(repr(a) for a in metadata["choices"])
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if _is_union(t):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        null = " or null" if type(None) in typing.get_args(t) else ""
        return " or ".join(describe_type(a) for a in args) + null
    if origin in (list, tuple):
        return f"a list of {describe_type(typing.get_args(t)[0])}"
    if t is dict or origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def bool_choice(value: Any, choices: tuple) -> Any:
    """The choice YAML 1.1 turned into a boolean (`no` -> False), or value unchanged."""
    if not isinstance(value, bool):
        return value
    words = YAML_BOOL_WORDS[value]
    hits = [c for c in choices if isinstance(c, str) and c.lower() in words]
    return hits[0] if len(hits) == 1 else value


def coerce(t: Any, v: Any, *, text: bool = False) -> tuple[bool, Any]:
    """(ok, value): v checked against type t, converting only what is meant.

    Always: int -> float, a numeric string -> float (YAML 1.1 reads 1e-3 as a
    string), a YAML boolean -> the choice it was written as. With text=True
    (values typed as text, e.g. a prompt line): "7" -> int, "yes" -> bool, and
    numbers -> str. Floats must be finite.
    """
    origin = typing.get_origin(t)
    if _is_union(t):
        if v is None:
            return type(None) in typing.get_args(t), None
        for a in typing.get_args(t):
            if a is not type(None):
                ok, out = coerce(a, v, text=text)
                if ok:
                    return True, out
        return False, v
    if origin is Literal:
        v = bool_choice(v, typing.get_args(t))
        return v in typing.get_args(t), v
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False, v
        args = typing.get_args(t)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                return False, v
            items = [coerce(a, x, text=text) for a, x in zip(args, v)]
        else:
            items = [coerce(args[0] if args else Any, x, text=text) for x in v]
        return all(ok for ok, _ in items), origin(x for _, x in items)
    if t is dict or origin is dict:
        return isinstance(v, dict), dict(v) if isinstance(v, dict) else v
    if t is Any:
        return True, v
    if t is bool:
        if text and isinstance(v, str) and v.strip().lower() in TEXT_BOOLS:
            return True, TEXT_BOOLS[v.strip().lower()]
        return isinstance(v, bool), v
    if t is int:
        if text and isinstance(v, str) and _INT_TEXT.fullmatch(v):
            return True, int(v)
        return isinstance(v, int) and not isinstance(v, bool), v
    if t is float:
        if isinstance(v, str):
            try:
                x = float(v)
            except ValueError:
                return False, v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            x = float(v)
        else:
            return False, v
        return (True, x) if math.isfinite(x) else (False, v)
    if t is str:
        if text and isinstance(v, (int, float)) and not isinstance(v, bool):
            return True, str(v)
        return isinstance(v, str), v
    raise TypeError(f"no coercion for type {t!r}: give the field a parser")  # a developer's error


def out_of_range(value: Any, metadata: typing.Mapping) -> bool:
    """Whether a number of value (or of a list value) is outside metadata min/max."""
    lo, hi, lo_open = metadata.get("min"), metadata.get("max"), metadata.get("min_open", False)
    for x in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            if lo is not None and (x <= lo if lo_open else x < lo) or hi is not None and x > hi:
                return True
    return False


# ---------------------------------------------------------------- mappings


@dataclass(frozen=True)
class Problem:
    """One bad option; `convert` reports, callers word it."""

    key: str                 # dotted key, as written
    kind: str                # unknown | type | choice | range | mapping | invalid
    value: Any = None        # the raw value
    expected: str = ""       # type / choice: what would be valid, in words
    t: Any = None            # type: the field's type
    choices: tuple = ()      # choice: the valid choices
    hint: tuple = ()         # unknown / choice: the closest valid names
    lo: Any = None           # range: allowed minimum and maximum (None: unbounded)
    hi: Any = None
    lo_open: bool = False    # range: lo itself is not allowed
    doc: str = ""            # range: what the value means, in a few words
    message: str = ""        # invalid: the field parser's own words

    @classmethod
    def out_of(cls, key: str, value: Any, t: Any, md: typing.Mapping) -> "Problem":
        """A range problem for a field of type t with metadata md."""
        return cls(key, "range", value, describe_type(t, md), t, lo=md.get("min"), hi=md.get("max"),
                   lo_open=md.get("min_open", False), doc=md.get("doc", ""))


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """typing.get_type_hints, once per class: evaluating them for every job made a
    5,000-job file take 7 s to load."""
    return typing.get_type_hints(cls)


def convert(cls: type, data: Any, *, text: bool = False, names: Iterable[str] | None = None,
            parsers: dict[str, Callable[[Any], Any]] | None = None, prefix: str = ""
            ) -> tuple[dict[str, Any], list[Problem]]:
    """(typed field values, problems) for the keys of `data` that are fields of `cls`.

    Nested dataclass fields take a mapping (None = all defaults) and are built.
    `names` limits which fields may be set; `parsers` maps a field name to a
    function turning its raw value into the typed one (ValueError = invalid; an
    OptionError's `key` names the key inside the field). A parsed value is
    range-checked like any other. Missing keys are left out, so the dataclass
    defaults apply.
    """
    if not isinstance(data, dict):
        return {}, [Problem(prefix.rstrip("."), "mapping", data)]
    parsers = parsers or {}
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = list(names) if names is not None else list(fields)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, raw in data.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            problems.append(Problem(dotted, "unknown", raw, hint=tuple(close_matches(key, valid, cutoff=0.5))))
            continue
        t, md = hints[key], fields[key].metadata
        if key in parsers:
            try:
                value = parsers[key](raw)
            except ValueError as e:
                inner = getattr(e, "key", "")
                problems.append(Problem(f"{dotted}.{inner}" if inner else dotted, "invalid", raw, message=str(e)))
                continue
            if out_of_range(value, md):
                problems.append(Problem.out_of(dotted, value, t, md))
                continue
            values[key] = value
            continue
        if dataclasses.is_dataclass(t):
            sub, subproblems = convert(t, {} if raw is None else raw, text=text, prefix=dotted + ".")
            problems += subproblems
            values[key] = t(**sub)
            continue
        options = choices_of(t, md)
        ok, value = coerce(t, bool_choice(raw, options), text=text)
        if ok and md.get("choices"):
            ok = value in options
        if not ok:
            if options and (not isinstance(raw, (list, dict)) and raw is not None):
                problems.append(Problem(dotted, "choice", raw, describe_type(t, md), t, options,
                                        tuple(close_matches(raw, [str(c) for c in options]))))
            else:
                problems.append(Problem(dotted, "type", raw, describe_type(t, md), t))
            continue
        if out_of_range(value, md):
            problems.append(Problem.out_of(dotted, value, t, md))
            continue
        values[key] = value
    return values, problems
