"""The report page: plots, the sample-grid timeline, checkpoints and the recipe of one
run, or several runs overlaid for comparison. Images by relative path; no server."""
from __future__ import annotations

import json
import math
import os
import shlex
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

import yaml

from .data import RunData
from .svg import fmt, line_plot

TITLES = {"loss/total": "loss: total", "train/lr": "learning rate", "train/images_per_sec": "images/s",
          "train/time_left_s": "time left (s)", "train/steps_total": "the run's length (steps)",
          "train/grad_norm": "gradient norm", "train/ema_decay": "EMA decay",
          "train/nonfinite_skips": "skipped non-finite steps", "eval/kid": "KID (in training; held-out images when set aside)",
          "eval/kid_std": "KID std", "eval/memorised": "memorised share (in training)",
          "eval/kid_train": "KID against the training images", "eval/memorised_pixel": "memorised (plain pixel L2)",
          "eval/time_share": "evaluation's share of the time"}
ORDER = ("loss/total", "loss/", "train/lr", "train/images_per_sec", "train/time_left_s", "eval/kid",
         "eval/memorised", "eval/", "train/")

CSS = """body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}h1{font-size:1.4em}
h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse}
td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plot{border:1px solid #eee;background:#fff}
.plot text{font-size:10px;fill:#444}.plot .title{font-size:12px;fill:#222}.plot .frame{fill:none;stroke:#bbb}
.plot .grid{stroke:#eee}.timeline .cols{display:flex;gap:16px;align-items:flex-start}
.timeline figure{margin:0}.cols{display:flex;gap:16px}figure img{image-rendering:pixelated}.timeline img{image-rendering:pixelated;max-width:520px;width:100%}
pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:40em}.meta{color:#666}
img.zoom{cursor:zoom-in}dialog.zoom{padding:4px;border:0;max-width:98vw;max-height:98vh;overflow:auto}
dialog.zoom img{image-rendering:pixelated;display:block;cursor:zoom-out}dialog.zoom::backdrop{background:#000c}
#stale{color:#a40;font-weight:bold}"""
# How often a live report reloads itself; written only while the run trains.
RELOAD_S = 30
# A live page written longer ago than this stops reloading: its trainer was killed (kill -9,
# power cut) before it could write the final page. The trainer rewrites it at every log
# interval, grid and checkpoint; the margin covers a slow evaluation or grid in between.
STALE_S = 3 * RELOAD_S + 60
# Time left from the speed over this many log steps, not the last one alone.
SPEED_WINDOW = 8

SLIDER_JS = """for (const tl of document.querySelectorAll('.timeline')) {
  const range = tl.querySelector('input'), label = tl.querySelector('.step');
  const steps = JSON.parse(tl.dataset.steps);
  const show = () => {
    const s = steps[range.value]; label.textContent = 'step ' + s;
    for (const col of tl.querySelectorAll('.col')) {
      const figs = [...col.querySelectorAll('figure')];
      let pick = figs[0];
      for (const f of figs) if (Number(f.dataset.step) <= s) pick = f;
      for (const f of figs) f.hidden = f !== pick;
    }
  };
  range.addEventListener('input', show); show();
}"""

# A click on a grid opens it full size, scaled by a whole factor, pixels kept sharp.
ZOOM_JS = """const zoom = document.createElement('dialog'); zoom.className = 'zoom'; document.body.append(zoom);
zoom.addEventListener('click', () => zoom.close());
for (const img of document.querySelectorAll('img.zoom')) img.parentElement.addEventListener('click', ev => {
  ev.preventDefault();
  const big = new Image(); big.alt = img.alt;
  big.onload = () => {
    const fit = Math.min(innerWidth * 0.95 / big.naturalWidth, innerHeight * 0.95 / big.naturalHeight);
    const k = Math.max(1, Math.floor(fit));
    big.width = big.naturalWidth * k; zoom.replaceChildren(big); zoom.showModal();
  };
  big.src = img.src;
});"""

# While the run trains: reload now and then, keeping the scroll position; not while a grid is
# open. Only while the page is fresh (#stale's data-written, ms since the epoch, less than
# data-stale-after seconds ago): a page whose trainer died stops and says so instead.
RELOAD_JS = """(() => {
  const line = document.getElementById('stale'), d = line.dataset;
  const written = Number(d.written), every = Number(d.every) * 1000, staleAfter = Number(d.staleAfter) * 1000;
  const fresh = () => Date.now() - written < staleAfter;
  const two = n => String(n).padStart(2, '0');
  const stop = () => {
    const at = new Date(written), now = new Date(), min = Math.max(0, Math.round((now - at) / 60000));
    const ago = min < 90 ? `${min} min` : min < 2880 ? `${Math.round(min / 60)} h` : `${Math.round(min / 1440)} days`;
    const day = at.toDateString() === now.toDateString() ? ''
      : `${at.getFullYear()}-${two(at.getMonth() + 1)}-${two(at.getDate())} `;
    line.textContent = `No update since ${day}${two(at.getHours())}:${two(at.getMinutes())} (${ago} ago): ` +
      `the run seems to have stopped. Run ${d.command} to refresh.`;
    line.hidden = false;
    document.getElementById('live').textContent = 'Not reloading: no update for a while.';
  };
  const tick = () => {
    if (!fresh()) return stop();
    if (document.querySelector('dialog[open]')) setTimeout(tick, every); else location.reload();
  };
  if (fresh()) setTimeout(tick, every); else stop();
})();"""


def tag_order(tag: str) -> tuple[int, str]:
    for i, prefix in enumerate(ORDER):
        if tag == prefix or (prefix.endswith("/") and tag.startswith(prefix)):
            return i, tag
    return len(ORDER), tag


def title(tag: str) -> str:
    if tag in TITLES:
        return TITLES[tag]
    group, _, name = tag.partition("/")
    return f"{group}: {name}" if name else tag


def rel(path: Path, out_dir: Path) -> str:
    return quote(Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix())


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def points(run: RunData, tag: str) -> list[tuple[int, float]]:
    return sorted(run.scalars.get(tag, {}).items())


def latest(run: RunData, tag: str) -> tuple[int, float] | None:
    p = points(run, tag)
    return p[-1] if p else None


def time_left(run: RunData) -> float | None:
    """The last logged time left, at the mean speed of the last SPEED_WINDOW log steps (their
    images/s averaged harmonically, as times add up) instead of the last step's alone."""
    left = latest(run, "train/time_left_s")
    speeds = [v for _, v in points(run, "train/images_per_sec")[-SPEED_WINDOW:] if math.isfinite(v) and v > 0]
    if left is None or not speeds or latest(run, "train/images_per_sec")[0] != left[0]:
        return left[1] if left else None
    mean = len(speeds) / sum(1 / v for v in speeds)
    return left[1] * speeds[-1] / mean


def progress(run: RunData) -> str:
    """"step N of M (P%)", or "step N" before the run's length is known."""
    step = max((s for v in run.scalars.values() for s in v), default=0)
    total = latest(run, "train/steps_total")
    if not total or total[1] <= 0:
        return f"step {step}"
    return f"step {step} of {int(total[1])} ({min(step / total[1], 1):.0%})"


def summary(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        left = time_left(run)
        total = latest(run, "loss/total")
        kid = latest(run, "eval/kid")
        rows.append(f"<tr><td>{escape(run.name)}</td><td class=progress>{progress(run)}</td>"
                    f"<td class=n>{fmt(total[1]) if total else '-'}</td>"
                    f"<td class=n>{duration(left) if left is not None else '-'}</td>"
                    f"<td class=n>{fmt(kid[1]) if kid else '-'}</td></tr>")
    return ("<table id=summary><tr><th>run</th><th>progress</th><th>loss</th>"
            f"<th>time left (over {SPEED_WINDOW} log steps)</th><th>KID</th></tr>" + "".join(rows) + "</table>")


def plots(runs: list[RunData]) -> str:
    tags = sorted({t for r in runs for t in r.scalars}, key=tag_order)
    svgs = [line_plot(title(t), [(r.name, points(r, t)) for r in runs], "plot-" + t.replace("/", "-"))
            for t in tags]
    return f'<div class=plots>{"".join(svgs)}</div>' if svgs else "<p>No scalars logged yet.</p>"


def latest_table(runs: list[RunData]) -> str:
    tags = sorted({t for r in runs for t in r.scalars}, key=tag_order)
    head = "".join(f"<th>{escape(r.name)}</th>" for r in runs)
    rows = []
    for t in tags:
        cells = []
        for r in runs:
            v = latest(r, t)
            cells.append(f'<td class=n data-tag="{escape(t)}" data-step="{v[0]}">{fmt(v[1])}</td>' if v else "<td>-</td>")
        rows.append(f"<tr><td>{escape(t)}</td>{''.join(cells)}</tr>")
    return f"<table id=latest><tr><th>scalar (latest)</th>{head}</tr>{''.join(rows)}</table>"


def zoomable(src: str, alt: str) -> str:
    """An image that opens full size on a click (ZOOM_JS; without scripts, the file itself)."""
    return f'<a href="{src}"><img class=zoom src="{src}" alt="{escape(alt)}" loading="lazy"></a>'


def timeline(runs: list[RunData], out_dir: Path) -> str:
    steps = sorted({s for r in runs for s, _ in r.grids})
    if not steps:
        return "<p>No sample grids yet.</p>"
    cols = []
    for r in runs:
        figs = "".join(f'<figure data-step="{s}">{zoomable(rel(p, out_dir), f"{r.name} step {s}")}'
                       f'<figcaption>{escape(r.name)}, step {s}</figcaption></figure>'
                       for s, p in r.grids) or f"<p>{escape(r.name)}: no grids</p>"
        cols.append(f"<div class=col>{figs}</div>")
    return (f"<div class=timeline data-steps='{json.dumps(steps)}'>"
            f'<input type=range min=0 max={len(steps) - 1} value={len(steps) - 1} aria-label="grid step"> '
            f'<span class=step>step {steps[-1]}</span><div class=cols>{"".join(cols)}</div></div>')


def copies(runs: list[RunData], out_dir: Path) -> str:
    """What keep-best kept, when copying began, and the closest pairs of the best and last model."""
    parts = []
    for r in runs:
        memo = points(r, "eval/memorised")
        if not memo and r.best is None:
            continue
        first = next((s for s, v in memo if v > 0), None)
        over = points(r, "eval/memorised_over_max")
        lines = [f"first sample copying a training image: {f'step {first}' if first is not None else 'none yet'}",
                 f"memorised share over eval.memorised_max from: {f'step {over[0][0]}' if over else 'never'}"]
        if r.best:
            step, samples = r.best.get("step"), r.best.get("samples")
            evaluated = [s for s, _ in points(r, "eval/kid")]
            # Not an evaluation's step: the look-back scored that checkpoint when the copies were found.
            how = "" if step in evaluated else " (a checkpoint scored by the look-back)"
            of = f" of {samples:.0f} samples" if samples else ""
            lines.append(f"model-best.safetensors: step {step}{how}, KID {fmt(r.best.get('kid', 0))}, "
                         f"memorised {r.best.get('memorised', 0):.1%}{of}")
            # A long tail here is a plateau: the hours after the best bought nothing.
            after = [s for s in evaluated if s > r.best.get("step", math.inf)]
            if after:
                lines.append(f"no better model in the {len(after)} evaluation{'s' if len(after) > 1 else ''} "
                             f"after it, to step {after[-1]}")
        figs = "".join(f'<figure>{zoomable(rel(p, out_dir), f"{r.name} closest pairs, {which} model")}'
                       f"<figcaption>{which} model: samples (red frame: a copy), their nearest training image, "
                       f"the second nearest</figcaption></figure>" for which, p in sorted(r.closest.items()))
        parts.append(f"<h3>{escape(r.name)}</h3><ul>{''.join(f'<li>{escape(t)}</li>' for t in lines)}</ul>"
                     f"<div class=cols>{figs}</div>")
    return "".join(parts) or "<p>No in-training evaluation (eval.time_share or eval.kid_every_steps).</p>"


def checkpoints(runs: list[RunData], out_dir: Path) -> str:
    rows = []
    for r in runs:
        for c in r.checkpoints:
            rows.append(f"<tr><td>{escape(r.name)}</td><td class=n>{c.step}</td><td class=n>{size_text(c.size)}</td>"
                        f"<td>{escape(rel(c.path, out_dir))}/</td></tr>")
        if r.model is not None:
            step = r.model_step if r.model_step is not None else "?"
            rows.append(f"<tr><td>{escape(r.name)}</td><td class=n>{step}</td>"
                        f"<td class=n>{size_text(r.model.stat().st_size)}</td>"
                        f"<td>{escape(rel(r.model, out_dir))} (export)</td></tr>")
    if not rows:
        return "<p>No checkpoints yet.</p>"
    return ("<table id=checkpoints><tr><th>run</th><th>step</th><th>size</th><th>path</th></tr>"
            + "".join(rows) + "</table>")


def flatten(d, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def recipes(runs: list[RunData]) -> str:
    parts = []
    if len(runs) > 1:
        flat = []
        for r in runs:
            try:
                flat.append(flatten(yaml.safe_load(r.recipe) or {}))
            except yaml.YAMLError:
                flat.append({})
        keys = sorted(k for k in set().union(*flat) if k != "name" and len({json.dumps(f.get(k), default=str)
                                                                             for f in flat}) > 1)
        head = "".join(f"<th>{escape(r.name)}</th>" for r in runs)
        rows = "".join(f"<tr><td>{escape(k)}</td>" + "".join(f"<td>{escape(str(f.get(k, '-')))}</td>" for f in flat)
                       + "</tr>" for k in keys)
        parts.append(f"<table id=recipe-diff><tr><th>setting that differs</th>{head}</tr>{rows}</table>"
                     if keys else "<p>The recipes are the same.</p>")
    for r in runs:
        body = f"<pre>{escape(r.recipe)}</pre>" if r.recipe else "<p>No recipe.yaml.</p>"
        parts.append(f"<details{' open' if len(runs) == 1 else ''}><summary>{escape(r.name)}: recipe.yaml "
                     f"(resolved)</summary>{body}</details>")
    return "".join(parts)


def scalars_json(runs: list[RunData]) -> str:
    """Every logged number, in full: the plots thin long curves, this does not."""
    data = {r.name: {t: [[s, v if math.isfinite(v) else None] for s, v in points(r, t)] for t in sorted(r.scalars)}
            for r in runs}
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def refresh_command(runs: list[RunData], out_path: Path) -> str:
    """The xurdif-report line that rebuilds this page."""
    args = ["xurdif-report", *(str(r.run_dir) for r in runs)]
    if len(runs) != 1 or Path(out_path).resolve() != (Path(runs[0].run_dir) / "report.html").resolve():
        args += ["-o", str(out_path)]
    return shlex.join(args)


def stale_line(runs: list[RunData], out_path: Path, written: float) -> str:
    """Hidden until RELOAD_JS finds the page stale; carries what the script needs."""
    return (f'<p id=stale hidden data-written="{int(written * 1000)}" data-every="{RELOAD_S}" '
            f'data-stale-after="{STALE_S}" data-command="{escape(refresh_command(runs, out_path))}"></p>')


def render_html(runs: list[RunData], out_path: Path, written: float | None = None) -> str:
    """The page; `written` (seconds since the epoch, default now) is when it says it was written."""
    written = time.time() if written is None else written
    out_dir = Path(out_path).parent
    names = ", ".join(r.name for r in runs)
    heading = f"Run {names}" if len(runs) == 1 else f"Runs compared: {names}"
    live = any(r.live for r in runs)
    state = f"Training: this page reloads every {RELOAD_S} s." if live else "Not training: this page is final."
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{escape(heading)}</title><style>{CSS}</style></head>
<body><h1>{escape(heading)}</h1>
<p class=meta>Updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(written))}. <span id=live>{state}</span>
Rebuild with <code>xurdif-report</code>.</p>
{stale_line(runs, out_path, written) if live else ""}
<p id=progress>{" · ".join(escape(f"{r.name}: " if len(runs) > 1 else "") + progress(r) for r in runs)}</p>
{summary(runs)}
<h2>Curves</h2>{plots(runs)}
<h2>Latest values</h2>{latest_table(runs)}
<h2>Sample grids</h2>{timeline(runs, out_dir)}
<h2>Copies</h2>{copies(runs, out_dir)}
<h2>Checkpoints</h2>{checkpoints(runs, out_dir)}
<h2>Recipe</h2>{recipes(runs)}
<script type="application/json" id="xurdif-scalars">{scalars_json(runs)}</script>
<script>{SLIDER_JS}
{ZOOM_JS}</script>
{f'<script id=reload>{RELOAD_JS}</script>' if live else ""}
</body></html>
"""
