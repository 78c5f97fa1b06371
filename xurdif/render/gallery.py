"""index.html of a render output folder: per prompt its contact sheet and every image
with its seed, parameters and the command line that renders it again; failures listed.
Built from manifest.jsonl, so it shows earlier runs into the same folder too."""
from __future__ import annotations

import json
import shlex
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

from ..atomic import atomic_write
from ..diffusion.samplers import TAKES_ETA
from .outputs import MANIFEST, contact_sheet_path

INDEX = "index.html"
CSS = """body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}.sheet{image-rendering:pixelated;width:min(100%,320px)}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;width:250px;font-size:12px}
.card img{image-rendering:pixelated;width:96px}.failures li{color:#a00}.meta{color:#666}"""
# A command is one line that scrolls, never broken mid-word, with a button that copies it whole.
COMMAND_CSS = """.cmd{display:flex;gap:4px;align-items:flex-start;margin-top:4px}
.cmd pre{flex:1;margin:0;white-space:pre;overflow-x:auto;background:#f6f6f6;padding:4px;font-size:12px}
.cmd button{font-size:11px;cursor:pointer}"""
COPY_JS = ("navigator.clipboard.writeText(this.nextElementSibling.textContent)"
           ".then(()=>{this.textContent='copied'},()=>{this.textContent='select and copy'})")


def read_manifest(out_dir: Path) -> list[dict]:
    """The manifest's records; a torn line (a kill mid-append) is skipped, as reconcile does."""
    path = out_dir / MANIFEST
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                rec["file"]
            except (ValueError, KeyError, TypeError):
                continue
            records.append(rec)
    return records


def absolute(path: str) -> str:
    return str(Path(path).absolute()) if path and path != "MODEL" else path


def rerender_command(rec: dict, out: str = "rerender") -> str:
    """xurdif-sample with every option of this image, seed first-class, into a fresh folder."""
    p = rec["params"]
    # Paths absolute (records written before the renderer made them so hold them as given):
    # the command works from any folder.
    args = ["xurdif-sample", absolute(p.get("model", "MODEL")), "--prompt", rec["prompt"], "--n", "1",
            "--seed", str(rec["seed"]), "--steps", str(p["steps"]), "--sampler", p["sampler"], "--spacing", p.get("spacing", "uniform")]
    if p.get("sigma_min"):
        args += ["--sigma-min", str(p["sigma_min"])]
    if p.get("sampler") in TAKES_ETA:
        args += ["--eta", str(p["eta"])]
    if p.get("size"):
        args += ["--size", f"{p['size'][0]}x{p['size'][1]}"]
    if p.get("init"):
        args += ["--init", absolute(p["init"]), "--strength", str(p["strength"])]
    if p.get("noise_mult", 1.0) != 1.0:
        args += ["--noise-mult", str(p["noise_mult"])]
    if p.get("post"):
        args += ["--post", p["post"]]
    if p.get("tile", "auto") != "auto":
        args += ["--tile", str(p["tile"])]
    if p.get("overlap") is not None:
        args += ["--overlap", str(p["overlap"])]
    if p.get("wrap"):
        args += ["--wrap"]
    if p.get("weights", "ema") != "ema":
        args += ["--weights", p["weights"]]
    return shlex.join(args + ["-o", out])


def command_html(command: str) -> str:
    """A command with its copy button (COMMAND_CSS styles it)."""
    return (f'<div class=cmd><button type=button title="copy the command" onclick="{escape(COPY_JS)}">copy</button>'
            f'<pre><code>{escape(command)}</code></pre></div>')


def params_text(p: dict) -> str:
    """The options that shaped this image; those with no effect (eta off ddim, strength
    without init, defaults) are left out."""
    skip = {"eta": p.get("sampler") not in TAKES_ETA, "sigma_min": not p.get("sigma_min"), "strength": not p.get("init"), "noise_mult": p.get("noise_mult") == 1.0,
            "weights": p.get("weights", "ema") == "ema", "tile": p.get("tile") == "auto",
            "wrap": not p.get("wrap")}
    keys = ("steps", "sampler", "spacing", "sigma_min", "eta", "size", "init", "strength", "noise_mult", "post", "tile", "overlap",
            "wrap", "weights")
    parts = [f"{k}={'x'.join(map(str, p[k])) if k == 'size' and p[k] else p[k]}"
             for k in keys if p.get(k) not in (None, "") and not skip.get(k)]
    return " ".join(parts)


def card(rec: dict) -> str:
    src = quote(rec["file"])
    guided = ""
    if rec["params"].get("guidance"):
        guided = ("<div>guided: " + escape(json.dumps(rec["params"]["guidance"], sort_keys=True))
                  + " (guidance goes in a YAML job file)</div>")
    return (f'<div class=card data-file="{escape(rec["file"])}"><a href="{src}"><img src="{src}" '
            f'alt="{escape(rec["prompt"])} seed {rec["seed"]}" loading="lazy"></a>'
            f'<div><b>seed {rec["seed"]}</b> &middot; {escape(rec["file"])}</div>'
            f'<div>{escape(params_text(rec["params"]))}</div>{guided}'
            f'{command_html(rerender_command(rec))}</div>')


def render_index(out_dir: Path, failures: list[str]) -> str:
    records = read_manifest(out_dir)
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if (out_dir / rec["file"]).is_file():
            groups.setdefault(rec["file"].split("/")[0], []).append(rec)
    sections = []
    for folder in sorted(groups):
        recs = sorted(groups[folder], key=lambda r: (r.get("k", 0), r["seed"]))
        sheet = contact_sheet_path(out_dir, folder)
        rel = quote(sheet.relative_to(out_dir).as_posix())
        sheet_html = (f'<a href="{rel}"><img class=sheet src="{rel}" alt="contact sheet"></a>'
                      if sheet.is_file() else "")
        sections.append(f'<section id="{escape(folder)}"><h2>{escape(recs[0]["prompt"])} '
                        f'<span class=meta>({len(recs)} images, {escape(folder)}/)</span></h2>{sheet_html}'
                        f'<div class=cards>{"".join(card(r) for r in recs)}</div></section>')
    fail = ("<h2>Failures</h2><ul class=failures>" + "".join(f"<li>{escape(f)}</li>" for f in failures) + "</ul>"
            if failures else "")
    n = sum(len(g) for g in groups.values())
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Renders: {escape(out_dir.name)}</title>
<style>{CSS}{COMMAND_CSS}</style></head>
<body><h1>Renders in {escape(out_dir.name)}/</h1>
<p class=meta>{n} images, {len(groups)} prompts, {len(failures)} failures in the last run.
Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>
{fail}{"".join(sections) or "<p>No images yet.</p>"}
</body></html>
"""


def write_gallery(out_dir: str | Path, failures: list[str]) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / INDEX
    text = render_index(out_dir, failures)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path
