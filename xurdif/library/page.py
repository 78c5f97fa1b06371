"""The library page: one self-contained HTML file (grids embedded as data URIs, no
external assets) with an entry per model."""
from __future__ import annotations

import base64
import io
import time
from html import escape
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write
from ..report.html import duration, size_text
from ..report.svg import fmt
from . import facts
from .entries import Entry, scan

LIBRARY = "library.html"
GRID_MAX = 512  # px: larger grids are scaled down, so a library of many models stays small
CSS = """body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}h1{font-size:1.4em}
.entry{display:flex;gap:16px;border-top:1px solid #ddd;padding:12px 0}.entry h2{font-size:1.1em;margin:0 0 6px}
.grid{image-rendering:pixelated;width:256px}figure{margin:0;min-width:256px}.nogrid{width:256px;min-width:256px;color:#888}
table{border-collapse:collapse}td{padding:1px 10px 1px 0;vertical-align:top}td:first-child{color:#666}
code{background:#f6f6f6;padding:2px 4px;word-break:break-all}.meta,.skipped{color:#666}"""
COPY_JS = """for (const b of document.querySelectorAll('button.copy')) b.addEventListener('click', () => {
  const code = b.previousElementSibling;
  navigator.clipboard.writeText(code.textContent).then(() => { b.textContent = 'copied'; }, () => {
    getSelection().selectAllChildren(code); b.textContent = 'press Ctrl+C';  // no clipboard access here
  });
});"""


def data_uri(path: Path) -> str:
    """A PNG as a data: URI, scaled down to GRID_MAX px on its longer side."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((GRID_MAX, GRID_MAX), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grid_html(e: Entry) -> str:
    if e.grid is None:
        why = "not in a run folder" if e.run_dir is None else "its run folder has no sample grid"
        return f"<div class=nogrid>no sample grid ({why})</div>"
    try:
        src = data_uri(e.grid[1])
    except OSError as err:
        return f"<div class=nogrid>sample grid unreadable ({escape(str(err))})</div>"
    return (f'<figure><img class=grid src="{src}" alt="{escape(e.name)}: sample grid, step {e.grid[0]}">'
            f"<figcaption class=meta>step {e.grid[0]}</figcaption></figure>")


def quality_text(e: Entry) -> str:
    q = e.quality
    if not q:
        return "not measured (eval.time_share or eval.kid_every_steps measure it in training)"
    parts = [f"KID {fmt(q['kid'])}"]
    if q.get("memorised") is not None:
        parts.append(f"memorised {q['memorised']:.1%}")
    return ", ".join(parts) + f" at step {q.get('step', '?')}, from {e.quality_from}"


def rows(e: Entry) -> list[tuple[str, str]]:
    m = e.meta
    images = f"{e.images:,} images" if e.images is not None else "image count unknown"
    return [
        ("data", f"{e.data or 'unknown'} · {images}"),
        ("trained", f"{seen:,} images seen" if (seen := facts.images_seen(m)) is not None else "images seen unknown"),
        ("training time", duration(e.seconds) if e.seconds is not None else "unknown"),
        ("model", f"{m.prediction} prediction · preset {e.preset or 'unknown'} · {m.image_size[1]}x{m.image_size[0]} px"
                  f" · {size_text(e.path.stat().st_size)}"),
        ("quality", quality_text(e)),
        ("parents", facts.lineage(m, e.parents)),
        ("source", m.source or "-"),
    ]


def entry_html(e: Entry) -> str:
    table = "".join(f"<tr><td>{k}</td><td>{escape(v)}</td></tr>" for k, v in rows(e))
    return (f'<section class=entry id="{escape(e.name)}">{grid_html(e)}<div><h2>{escape(e.name)}</h2>'
            f"<table>{table}</table><p>render: <code class=command>{escape(e.command)}</code> "
            f"<button class=copy type=button>copy</button></p></div></section>")


def library_html(folder: str | Path, skipped: list[str] | None = None) -> str:
    """The page for every model file under `folder`; `skipped` (if given) receives a line per
    .safetensors file that is not a model."""
    folder = Path(folder)
    entries, passed = scan(folder)
    if skipped is not None:
        skipped.extend(passed)
    notes = ("<details class=skipped><summary>" + f"{len(passed)} .safetensors files that are not models"
             + "</summary><ul>" + "".join(f"<li>{escape(s)}</li>" for s in passed) + "</ul></details>"
             if passed else "")
    title = f"Model library: {folder.resolve().name}"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{escape(title)}</title><style>{CSS}</style></head>
<body><h1>{escape(title)}</h1>
<p class=meta>{len(entries)} models under {escape(str(folder))}. Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.
Rebuild with <code>xurdif-library</code>.</p>
{"".join(entry_html(e) for e in entries) or "<p>No model files.</p>"}
{notes}
<script>{COPY_JS}</script>
</body></html>
"""


def write_library(folder: str | Path, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write the page atomically (default FOLDER/library.html); returns its path and the skipped files."""
    out = Path(out) if out is not None else Path(folder) / LIBRARY
    skipped: list[str] = []
    text = library_html(folder, skipped)
    with atomic_write(out, "w") as f:
        f.write(text)
    return out, skipped
