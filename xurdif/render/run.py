"""Render job lists: load the model, plan batches, sample, postprocess, write.

Batches are planned from the full job list (grouped by everything that must
be equal inside a batch), and a batch is skipped only when all its images
exist. A rerun after an interruption therefore renders exactly the batches an
uninterrupted run rendered, so every pixel is the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from ..data.images import BadImage, read_picture
from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import TAKES_ETA, sample
from ..diffusion.tiled import TiledDenoiser
from ..lock import folder_lock
from ..postprocess import parse_chain, apply_chain
from ..sampling.defaults import Sampling, resolve
from ..weights import load_denoiser, model_sha256, resolve_model_path
from . import outputs
from .jobs import Job, JobError, parse_merge


def make_denoiser(base_denoiser: Callable, job: Job, device, clip_cache: dict) -> Callable:
    """Wrap the base denoiser according to `job.guidance` (the job's prompt is the
    default CLIP text). A job without a `guidance:` section renders unguided: the
    models are unconditional, and CLIP weights must be configured to be used."""
    if not job.guidance:
        return base_denoiser
    from ..guidance import build_guided_denoiser

    return build_guided_denoiser(base_denoiser, job.guidance, job.prompt, device, cache=clip_cache)


def with_sampling(job: Job, own: Sampling) -> Job:
    """The job with the sampler, steps, spacing and eta it renders with (see sampling/defaults.py)."""
    st = resolve(own, job.sampler, job.steps, job.spacing, job.eta)
    return dataclasses.replace(job, sampler=st.sampler, steps=st.steps, spacing=st.spacing, eta=st.eta)


def tiling(job: Job, size: tuple[int, int], model_size: tuple[int, int]
           ) -> tuple[tuple[int, int] | None, int] | None:
    """(tile (height, width) or None for the whole canvas, overlap) when the job
    renders as tiles or wraps; None for a plain render. `size` is (width, height),
    `model_size` the model's training size (height, width)."""
    w, h = size
    mh, mw = model_size
    if job.tile == "auto":
        tile = (mh, mw) if max(w / mw, h / mh) > 1.5 else None
    elif job.tile == "off":
        tile = None
    else:
        tile = (job.tile, job.tile)
    if tile is not None and tile[0] >= h and tile[1] >= w:
        tile = None  # one tile covers the canvas
    if tile is None and not job.wrap:
        return None
    overlap = job.overlap if job.overlap is not None else (min(tile) // 4 if tile else 0)
    return tile, overlap


@dataclass
class Task:
    job: Job
    k: int       # image number within the job
    seed: int
    rel: str     # path inside the output folder
    size: tuple[int, int]  # (width, height)
    merge_weight: float | None = None  # merge sweep: the share of the job's merge model


def merge_rel(folder: str, seed: int, weight: float) -> str:
    return f"{folder}/{seed}-w{weight:g}.png"


def job_rels(job: Job) -> list[str]:
    """A job's output files in contact-sheet order (a merge sweep: each seed's row left to right)."""
    folder = outputs.job_dir_name(job.index, job.prompt)
    if job.merge:
        _, ws = parse_merge(job.merge)
        return [merge_rel(folder, s, w) for s in job.seeds() for w in ws]
    return [f"{folder}/{s}.png" for s in job.seeds()]


@dataclass
class Result:
    written: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    contact_sheets: list[Path] = field(default_factory=list)
    interrupted: bool = False


def load_init(job: Job, size: tuple[int, int] | None, default_side: int, stride: int
              ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The init image as [3, H, W] in [0, 1] and the output size (width, height).

    Without an explicit size the init's aspect ratio is kept, scaled so its
    longer side is the model's size, each side a multiple of the network stride.
    With one, the init is scaled to cover it and centre-cropped (never distorted).
    """
    try:
        im = read_picture(job.init)  # upright, transparency on white, as in training
    except BadImage as e:
        raise JobError(f"{job.where}: cannot read init image {job.init}: {e}") from None
    w0, h0 = im.size
    if size is None:
        scale = default_side / max(w0, h0)
        size = tuple(max(stride, round(v * scale / stride) * stride) for v in (w0, h0))
    w, h = size
    scale = max(w / w0, h / h0)
    sw, sh = max(w, round(w0 * scale)), max(h, round(h0 * scale))
    im = im.resize((sw, sh), Image.Resampling.LANCZOS)
    left, top = (sw - w) // 2, (sh - h) // 2
    im = im.crop((left, top, left + w, top + h))
    import numpy as np

    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255, (w, h)


def params_record(job: Job, task: Task, model_path: Path, sha: str, weights: str,
                  model_size: tuple[int, int] = (0, 0)) -> dict:
    params = {**job.options(), "size": list(task.size), "model": str(model_path), "weights": weights}
    tiles = tiling(job, task.size, model_size)
    params["tiles"] = None if tiles is None else {"tile": list(tiles[0]) if tiles[0] else None,
                                                  "overlap": tiles[1], "wrap": job.wrap}
    if task.merge_weight is not None:
        params["merge"] = {"model": parse_merge(job.merge)[0], "weight": task.merge_weight}
    if job.guidance:
        from ..guidance import describe_guidance

        params["guidance"] = describe_guidance(job.guidance, job.prompt)
    return {"file": task.rel, "index": job.index, "k": task.k, "prompt": job.prompt,
            "seed": task.seed, "model_sha256": sha, "params": params}


def batch_key(job: Job, size: tuple[int, int], model_size: tuple[int, int] = (0, 0),
              merge_weight: float | None = None) -> str:
    # Everything that must be shared inside one sampler call.
    key = {"size": size, "steps": job.steps, "sampler": job.sampler, "eta": job.eta, "spacing": job.spacing,
           "noise_mult": job.noise_mult, "strength": job.strength if job.init else 1.0,
           "init": bool(job.init), "tiles": tiling(job, size, model_size), "wrap": job.wrap}
    if job.merge:
        key["merge"] = [parse_merge(job.merge)[0], merge_weight]
    if job.guidance:  # a guided denoiser is built per job
        key["job"] = job.index
    return json.dumps(key, sort_keys=True)


@contextlib.contextmanager
def stop_on_sigint():
    """First Ctrl-C: finish the current batch and stop. Second: stop now."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        tqdm.write("Ctrl-C: finishing the current batch, then stopping (Ctrl-C again to abort)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def render(model: str | Path, jobs: list[Job], out_dir: str | Path, *, weights: str = "ema",
           batch_size: int = 8, device: str | torch.device = "cpu", overwrite: bool = False,
           presets: dict[str, str] | None = None, precision: str = "fp32",
           progress: bool = True) -> Result:
    """Render every job into out_dir, skipping finished images. One renderer per folder:
    FolderBusy (one line naming the holder) while another holds it."""
    with folder_lock(out_dir, "renderer", inside=True):
        return _render(model, jobs, Path(out_dir), weights=weights, batch_size=batch_size, device=device,
                       overwrite=overwrite, presets=presets, precision=precision, progress=progress)


def _render(model: str | Path, jobs: list[Job], out_dir: Path, *, weights: str, batch_size: int,
            device: str | torch.device, overwrite: bool, presets: dict[str, str] | None, precision: str,
            progress: bool) -> Result:
    model_path = resolve_model_path(model)
    den, meta = load_denoiser(model_path, weights, device)
    sha = model_sha256(model_path)
    out_dir = Path(out_dir)
    done = outputs.reconcile(out_dir)
    result = Result()
    clip_cache: dict = {}  # CLIP models loaded once for all guided jobs
    stride = int(getattr(den.net, "factor", 8))
    mh, mw = (meta.image_size[0], meta.image_size[1])  # ModelMeta stores (H, W); square in practice
    default_side = max(mh, mw)
    model_size = (mh, mw)
    mixed = MergedModels(den, model_path, weights)
    own = meta.default_sampling()
    # A job without a sampler takes the model's; what it renders with is what gets recorded.
    jobs = [with_sampling(job, own) for job in jobs]

    # Resolve sizes and inits per job; a bad job fails alone.
    inits: dict[int, torch.Tensor] = {}
    tasks: list[Task] = []
    for job in jobs:
        try:
            size = job.size
            if job.guidance:  # bad guidance options fail this job now, not mid-run
                from ..guidance import describe_guidance

                describe_guidance(job.guidance, job.prompt)
            if job.init:
                inits[job.index], size = load_init(job, size, default_side, stride)
            size = size or (mw, mh)
            folder = outputs.job_dir_name(job.index, job.prompt)
            outputs.safe_path(out_dir, folder)
            if job.merge:  # a model of another kind fails this job now
                mixed.check(parse_merge(job.merge)[0])
        except (JobError, ValueError) as e:  # a JobError names file:line already; the rest need it
            result.failures.append(str(e) if isinstance(e, JobError) else f"{job.where}: {e}")
            continue
        if job.merge:
            _, ws = parse_merge(job.merge)
            tasks += [Task(job, k, s, merge_rel(folder, s, w), size, w)
                      for k, s in enumerate(job.seeds()) for w in ws]
        else:
            tasks += [Task(job, k, s, f"{folder}/{s}.png", size) for k, s in enumerate(job.seeds())]
    if overwrite:
        redo = {t.rel for t in tasks}
        done = {rel: rec for rel, rec in done.items() if rel not in redo}
        outputs.rewrite_manifest(out_dir, done.values())

    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(batch_key(t.job, t.size, model_size, t.merge_weight), []).append(t)
    batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    todo = [b for b in batches if any(t.rel not in done for t in b)]
    result.skipped = sum(1 for t in tasks if t.rel in done)
    total = sum(1 for b in todo for t in b if t.rel not in done)

    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
                if precision == "bf16" else contextlib.nullcontext())
    bar = tqdm(total=total, unit="img", desc="rendering", disable=not progress, dynamic_ncols=True)
    with stop_on_sigint() as flag, bar:
        for batch in todo:
            if flag["stop"]:
                result.interrupted = True
                break
            try:
                with autocast:
                    imgs = _render_batch(mixed.get(batch[0]), batch, inits, presets, device, clip_cache,
                                         model_size, batch_size, own.curve)
            except (JobError, ValueError, RuntimeError) as e:
                result.failures.append(f"{batch[0].job.where}: {e}")
                continue
            for t, img in zip(batch, imgs):
                if t.rel in done:
                    continue
                rec = params_record(t.job, t, model_path, sha, weights, model_size)
                outputs.save_image(out_dir, t.rel, img, rec)
                done[t.rel] = rec
                result.written += 1
                bar.update(1)

    # Contact sheets for every job that is complete on disk.
    for job in jobs:
        folder = outputs.job_dir_name(job.index, job.prompt)
        rels = job_rels(job)
        if rels and all(r in done for r in rels):
            nrow = len(parse_merge(job.merge)[1]) if job.merge else None
            sheet = outputs.write_contact_sheet(out_dir, folder, [out_dir / r for r in rels], nrow)
            if sheet:
                result.contact_sheets.append(sheet)
    return result


class MergedModels:
    """The render's model and, for merge sweeps, its mixes with other models:
    (1 - w) · this + w · B per tensor (xurdif/merge.py), built once per weight."""

    def __init__(self, den: Denoiser, path: Path, weights: str):
        self.den, self.path, self.weights = den, path, weights
        self.states: dict[str, tuple[dict, dict]] = {}
        self.mixed: dict[tuple[str, float], Denoiser] = {}

    def check(self, other: str) -> None:
        from ..merge import load_models

        load_models([self.path, other])

    def get(self, task: Task) -> Denoiser:
        if task.merge_weight is None:
            return self.den
        import copy

        from ..merge import interpolate
        from ..weights import load_state

        other = parse_merge(task.job.merge)[0]
        key = (other, task.merge_weight)
        if key not in self.mixed:
            if other not in self.states:
                self.states[other] = (load_state(self.path, self.weights), load_state(other, self.weights))
            a, b = self.states[other]
            w = task.merge_weight
            net = copy.deepcopy(self.den.net)
            net.load_state_dict(interpolate([a, b], [1 - w, w], [str(self.path), other]))
            self.mixed[key] = dataclasses.replace(self.den, net=net)
        return self.mixed[key]


def _render_batch(den: Denoiser, batch: list[Task], inits: dict[int, torch.Tensor],
                  presets: dict[str, str] | None, device, clip_cache: dict,
                  model_size: tuple[int, int] = (0, 0), batch_size: int = 8,
                  curve: tuple[float, ...] = ()) -> torch.Tensor:
    job = batch[0].job
    w, h = batch[0].size
    gens = [torch.Generator().manual_seed(t.seed) for t in batch]
    init = None
    if job.init:
        init = den.to_model(torch.stack([inits[t.job.index] for t in batch]))
    base = den
    tiles = tiling(job, (w, h), model_size)
    if tiles is not None:
        # Tiles go through the network `batch_size` at a time, like whole images.
        base = TiledDenoiser(den, tiles[0], tiles[1], job.wrap, batch=batch_size)
    # Guidance wraps the tiled denoiser: its CLIP cutouts come from the whole canvas.
    x0 = sample(make_denoiser(base, job, device, clip_cache), (len(batch), 3, h, w), job.sampler, job.steps,
                generator=gens, init=init, strength=job.strength if init is not None else 1.0,
                noise_mult=job.noise_mult, device=device, spacing=job.spacing, curve=curve,
                **({"eta": job.eta} if job.sampler in TAKES_ETA else {}))
    imgs = den.to_image(x0.float()).cpu()
    # Postprocessing differs per job inside a batch; grain continues each image's generator.
    out = []
    for t, img, g in zip(batch, imgs, gens):
        out.append(apply_chain(img[None], parse_chain(t.job.post, presets), [g])[0])
    return torch.stack(out)
