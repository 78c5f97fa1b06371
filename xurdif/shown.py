"""Showing what comes from outside (recipe values, job keys, file names, prompts) in
messages, logs and pages: one line, bounded, no control characters.

A value is shown at most a few levels deep and a few items wide (a YAML alias bomb
expands to billions of items: its repr alone ran out of memory), and newlines,
terminal escapes and bidirectional overrides are written as escapes (a file named
`x\\n\\x1b[31mRED.png` must not split a warning or colour the terminal).
"""
from __future__ import annotations

import re
import reprlib
from typing import Any

# C0 and C1 controls, DEL, the Unicode line and paragraph separators and the
# bidirectional marks, embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def clean(text: str) -> str:
    """`text` with control characters written as escapes (\\n, \\x1b, \\u202e)."""
    return _CONTROL.sub(_escape, str(text))


def _repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxarray, r.maxdict, r.maxset = 2, 6, 6, 6, 6, 6
    r.maxfrozenset, r.maxdeque, r.maxstring, r.maxlong, r.maxother = 6, 6, 80, 40, 80
    return r


_SHOW = _repr()
MAX_SHOWN = 120  # characters of one value in a message


def shown(value: Any) -> str:
    """repr(value), bounded in depth, width and length, on one line."""
    try:
        text = _SHOW.repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        text = f"<an integer of over {4300} digits>"
    text = clean(text)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."
