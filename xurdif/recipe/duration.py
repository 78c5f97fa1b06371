"""Wall-clock durations in recipes: `90s`, `30m`, `8h`, `1h30m`, `1h30m15s`."""
from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds; ValueError naming the valid forms for anything else."""
    s = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(s)
    units = [u for _, u in parts]
    if not s or "".join(n + u for n, u in parts) != s or len(set(units)) != len(units) \
            or units != sorted(units, key="hms".index):
        raise ValueError(f"{text!r} is not a duration; expected e.g. 90s, 30m, 8h or 1h30m")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be longer than 0")
    return seconds
