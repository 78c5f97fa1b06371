"""One studio render and the history of them: the page's form becomes a job (checked by
render.jobs.make_job like a prompts-file line), rendered by render.run.render, and its
result (images, message, each image's record and re-render command) joins the history."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

from .render.gallery import command_html, params_text, rerender_command, write_gallery
from .render.jobs import Job, JobError, make_job
from .render.outputs import read_record
from .render.run import Cancelled, render
from .sampling.defaults import AUTO
from .weights import resolve_model_path

WHERE = ("studio", 0)  # a job's origin: stripped from messages, the page is the context


def message(text: str) -> str:
    # make_job names the origin as "studio: " (no line) or "studio:N: "
    return re.sub(rf"\b{WHERE[0]}(:\d+)?: ", "", text)
def next_index(out_dir: Path) -> int:
    """Each studio render gets its own <index>-<slug> folder after those already there."""
    used = [int(m.group(1)) for p in out_dir.glob("*") if (m := re.fullmatch(r"(\d+)-.*", p.name)) and p.is_dir()]
    return max(used, default=-1) + 1


def guidance_options(text: str, clip_model: str, clip_weights: str, image_prompt: str | None,
                     target: str | None, style: str | None, style_weight: float, scale: float) -> dict:
    """The job's `guidance:` mapping; empty (unguided) unless a guide is given."""
    g = {k: v for k, v in (("text", text.strip()), ("image_prompts", image_prompt or ""), ("target", target or ""),
                           ("style", style or "")) if v}
    if not g:
        return {}
    g.update(clip_model=clip_model.strip() or "ViT-B-32", scale=scale)
    if clip_weights.strip():
        g["clip_weights"] = clip_weights.strip()
    if style:
        g["style_weight"] = style_weight
    return g


def make_studio_job(prompt: str, n, seed: str, sampler: str, steps, size: str, init: str | None, strength,
                    eta, noise_mult, post: str, guidance: dict, index: int, spacing: str = AUTO,
                    tile: str = "auto", overlap: str | None = None, wrap: bool = False, sigma_min: str = "") -> Job:
    # Empty steps (or 0), eta, overlap and sigma_min: the model's own or the default, like a job line that
    # does not name them.
    opts = {"prompt": prompt, "n": str(int(n)), "seed": seed or "", "sampler": sampler or AUTO,
            "spacing": spacing or AUTO, "size": size.strip(), "init": init or "", "strength": str(strength),
            "noise_mult": str(noise_mult), "post": post.strip(), "guidance": guidance,
            "tile": (tile or "auto").strip(), "wrap": "true" if wrap else "false"}
    if steps:
        opts["steps"] = str(int(steps))
    if eta is not None:
        opts["eta"] = str(eta)
    for key, value in (("overlap", overlap), ("sigma_min", sigma_min)):
        if str(value or "").strip():
            opts[key] = str(value).strip()
    return make_job(opts, Job(index=index), WHERE, {})


def tiles_text(tiles: dict | None) -> str:
    if not tiles:
        return "not tiled"
    w_h = tiles["tile"]
    tile = f"{w_h[0]}x{w_h[1]} tiles, overlap {tiles['overlap']} px" if w_h else "the whole canvas"
    return f"tiled: {tile}" + (", wrapped (seamless)" if tiles["wrap"] else "")


def file_url(path: Path) -> str:
    return "/gradio_api/file=" + quote(str(Path(path).resolve()))


def history_entry(number: int, prompt: str, message_text: str, records: list[tuple[Path, dict]]) -> str:
    """One render in the history: its message, and each image whole with its parameters and command."""
    cards = "".join(
        f'<figure class=studio-image><a href="{file_url(path)}" target=_blank><img src="{file_url(path)}" '
        f'alt="seed {rec["seed"]}"></a><figcaption><b>seed {rec["seed"]}</b> · '
        f'{escape(params_text(rec["params"]))} · {escape(tiles_text(rec["params"].get("tiles")))}'
        f'{command_html(rerender_command(rec))}</figcaption></figure>' for path, rec in records)
    kind = "error" if message_text.startswith("Error") else "stopped" if message_text.startswith("Stopped") else "ok"
    return (f'<section class="studio-entry {kind}" data-render="{number}"><h4>#{number} · {escape(prompt)} · '
            f'{time.strftime("%H:%M:%S")}</h4><p>{escape(message_text)}</p>{cards}</section>')


def render_once(model: str, out_dir: Path, device: str, job_args: dict, guidance: dict,
                progress: bool = True, cancel: threading.Event | None = None
                ) -> tuple[list[tuple[str, str]], str, list[tuple[Path, dict]]]:
    """(images as (path, caption), message, (path, record) of each image). Bad input is the
    message, never a traceback; a render stopped by `cancel` says "Stopped: ..."."""
    from .render.outputs import job_dir_name
    from .render.plan import outputs_of

    job = None
    try:
        model_path = resolve_model_path(model or "")
        job = make_studio_job(**job_args, guidance=guidance, index=next_index(out_dir))
        result = render(model_path, [job], out_dir, device=device, progress=progress, cancel=cancel)
    except (FileNotFoundError, JobError, ValueError, OSError, RuntimeError) as e:
        return [], message(f"Error: {e}"), []
    except Cancelled:
        # The batch in flight is dropped; batches finished before the stop stay on disk.
        kept = sorted((out_dir / job_dir_name(job.index, job.prompt)).glob("*.png")) if job else []
        write_gallery(out_dir, [])
        return [], f"Stopped: the render was stopped; {len(kept)} image(s) of it were finished and kept.", []
    write_gallery(out_dir, result.failures)
    if result.failures:
        return [], message("Error: " + "; ".join(result.failures)), []
    folder = out_dir / job_dir_name(job.index, job.prompt)
    records = [(out_dir / o.rel, read_record(out_dir / o.rel)) for o in outputs_of(job)]
    images = [(str(path), f"seed {rec['seed']}") for path, rec in records]
    tiled = tiles_text(records[0][1]["params"].get("tiles")) if records else ""
    return images, f"Saved {len(images)} image(s) to {folder} ({tiled}; gallery: {out_dir / 'index.html'})", records


class Renders:
    """Every render since the studio started (newest first, as HTML), one at a time in a
    worker thread: a new render waits for a stopped one to end (within one sampler step)."""

    def __init__(self, out_dir: Path, device: str):
        self.out_dir, self.device = out_dir, device
        self.history: list[str] = []
        self.busy = threading.Lock()
        self.cancel: threading.Event | None = None  # the running render's: Stop sets it

    def history_html(self) -> str:  # data-count: the page has it (a reload too)
        return f'<div data-count={len(self.history)}>{"".join(self.history) or "<p>No renders yet.</p>"}</div>'

    def work(self, model_v: str, prompt_v: str, job_args: dict, guidance: dict, cancel: threading.Event):
        with self.busy:
            self.cancel = cancel
            try:
                images, text, records = render_once(model_v, self.out_dir, self.device, job_args, guidance,
                                                    cancel=cancel)
            finally:
                self.cancel = None
            self.history.insert(0, history_entry(len(self.history) + 1, prompt_v, text, records))
            return images, text, self.history_html()

    async def render(self, model_v: str, prompt_v: str, job_args: dict, guidance: dict):
        """work() in a worker thread. Stop (the button, or a client's cancel) abandons the
        awaiting event; the sampler in the thread then stops at its next step and the
        history records the render as stopped."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.work, model_v, prompt_v, job_args, guidance, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise

    def stop(self) -> None:
        if (cancel := self.cancel) is not None:
            cancel.set()
