"""How bad options are worded, for every input (a recipe, a job line or file, a guidance block,
a postprocessing chain): "did you mean" hints, `say` in the `Voice` of the input a
`Problem` (xurdif/options.py) came from, and `OptionError`, which carries the lines. Each
voice is pinned by tests and known to users."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .shown import shown

if TYPE_CHECKING:
    from .options import Problem


def close_matches(word: Any, valid: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The valid names closest to `word`, best first (the one "did you mean" source)."""
    return difflib.get_close_matches(str(word), list(valid), n=n, cutoff=cutoff)


def did_you_mean(hints: Sequence[str], quote: bool = True) -> str:
    """"did you mean 'x'?" for the closest valid names ("" for none): the one wording of a hint."""
    if not hints:
        return ""
    return f"did you mean {', '.join(repr(h) if quote else str(h) for h in hints)}?"


def suggest_key(dotted: str, valid: list[str]) -> str | None:
    """The valid dotted key closest to `dotted`: a section for a top-level key,
    a key of the same section, the same key name in another section, or the
    closest dotted key."""
    section, _, leaf = dotted.rpartition(".")
    if not section:  # top level: a section (or a top-level key) is meant
        near = close_matches(leaf, sorted({k.split(".")[0] for k in valid}))
        if near:
            return near[0]
    same = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    near = close_matches(leaf, same)
    if near:
        return same[near[0]]
    by_leaf = {k.rpartition(".")[2]: k for k in valid}
    near = close_matches(leaf, by_leaf)
    if near:
        return by_leaf[near[0]]
    near = close_matches(dotted, valid, cutoff=0.5)
    return near[0] if near else None


class OptionError(ValueError):
    """Bad options, whatever they configure (a recipe, a job, a guidance block): one line
    per problem. `key` is the option the first line is about, so that a caller who knows
    where each key was written can point at its line."""

    def __init__(self, problems: str | Iterable[str], key: str = ""):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.key = key
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Voice:
    """How one kind of input words a Problem, kind by kind: templates that `say` fills
    with key, value, hint, valid, expected, span, note, what, lo, hi and message."""

    unknown: str
    choice: str
    type: str
    range: str
    invalid: str = "{message}"
    mapping: str = "{key}: must be a mapping, got {value}"
    hint: str = "{} "         # where "did you mean ...?" goes, when there is a close name
    quote: bool = True        # the hint's names in quotes ('seed') or bare (optim.lr)
    dots: bool = True         # a closed range as 1..1000, else as [1, 1000]
    number: str = "a number"  # what a float field expects, in words


def span(lo: Any, hi: Any, lo_open: bool = False, dots: bool = True) -> str:
    """An allowed range in words: "in 1..1000", "in (0, 1]", ">= 1", "> 0", "<= 1"."""
    if lo is not None and hi is not None:
        return f"in {lo}..{hi}" if dots and not lo_open else f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"<= {hi}"


def say(p: Problem, voice: Voice, valid: Iterable[str] = ()) -> str:
    """The problem in one line, in the voice of its input: the one place problems are worded.
    `valid` lists the valid names of an unknown key."""
    near = did_you_mean(p.hint, voice.quote)
    return getattr(voice, p.kind).format(
        key=p.key, value=shown(p.value), hint=voice.hint.format(near) if near else "",
        valid=", ".join(str(c) for c in (p.choices or valid)),
        expected=voice.number if p.t is float else p.expected,
        span=span(p.lo, p.hi, p.lo_open, voice.dots), note=f" ({p.doc})" if p.doc else "",
        what=p.doc or p.expected, lo="-inf" if p.lo is None else p.lo, hi="inf" if p.hi is None else p.hi,
        message=p.message)
