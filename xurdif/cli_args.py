"""Command-line numbers checked like recipe keys: a value out of range is refused by
argparse with the option's name and the valid range (`--batch-size 0` used to fail
deep inside with "range() arg 3 must not be zero", and -3 rendered nothing, exit 0)."""
from __future__ import annotations

import argparse
from typing import Callable


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in lo..hi (hi None: no upper bound)."""
    span = f"{lo}..{hi}" if hi is not None else f"at least {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text.strip()) <= 40 else None
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer {'in ' if hi is not None else ''}{span}, "
                                             f"got {text[:40]!r}")
        return value

    parse.__name__ = f"integer {span}"
    return parse
