"""Run reports: one self-contained HTML page per run (or per comparison of runs)."""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write
from .data import RunData, Series, gather, read_scalars, training
from .html import render_html

REPORT = "report.html"


def write_report(runs: list[RunData], out_path: str | Path) -> Path:
    """Write atomically: a browser reloading mid-write sees the old page or the new one."""
    out_path = Path(out_path)
    text = render_html(runs, out_path)
    with atomic_write(out_path, "w") as f:
        f.write(text)
    return out_path


__all__ = ["REPORT", "RunData", "Series", "gather", "read_scalars", "render_html", "training", "write_report"]
