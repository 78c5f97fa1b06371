"""Render job lists: load the model, plan the jobs (plan.py), sample the batches, write.

Batches are planned from the full job list (grouped by everything that must
be equal inside a batch), and a batch is skipped only when all its images
exist. A rerun after an interruption therefore renders exactly the batches an
uninterrupted run rendered, so every pixel is the same.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..diffusion.tiled import TiledDenoiser
from ..lock import folder_lock
from ..postprocess import apply_chain
from ..weights import load_denoiser, model_sha256, resolve_model_path
from . import outputs
from .interrupt import stop_on_sigint
from .jobs import Job
from .merged import MergedModels
from .plan import Model, Task, batches, make_plan, outputs_of, record


class Cancelled(Exception):
    """The render was stopped from outside (render's `cancel` event set): raised from the
    sampler's per-step callback, so the batch in flight stops within one step and nothing
    of it is written. Not a RuntimeError: a batch failure would let the next batch run."""


def cancel_callback(cancel: threading.Event | None):
    """The sampler's per-step callback that raises Cancelled once `cancel` is set."""
    if cancel is None:
        return None

    def check(_state: dict) -> None:
        if cancel.is_set():
            raise Cancelled("stopped")
    return check


@dataclass
class Result:
    written: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    contact_sheets: list[Path] = field(default_factory=list)
    interrupted: bool = False


@dataclass
class Sampler:
    """How batches are sampled: the models, the device and what lasts across batches."""

    models: MergedModels
    device: str | torch.device
    batch_size: int  # images per sampler call, and tiles per network call
    precision: str
    clip_cache: dict = field(default_factory=dict)  # CLIP models loaded once for all guided jobs
    cancel: threading.Event | None = None  # set: the sampler raises Cancelled at its next step

    def __call__(self, batch: list[Task]) -> torch.Tensor:
        merge = batch[0].plan.job.merge
        den = self.models.get(merge.model if merge else None, batch[0].weight)
        autocast = (torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
                    if self.precision == "bf16" else contextlib.nullcontext())
        with autocast:
            return sample_batch(den, batch, self.device, self.clip_cache, self.batch_size,
                                cancel_callback(self.cancel))


def sample_batch(den: Denoiser, batch: list[Task], device, clip_cache: dict, tile_batch: int,
                 callback=None) -> torch.Tensor:
    """One sampler call for images that share everything but their seeds (plan.batch_key):
    [N, 3, H, W] in [0, 1], postprocessed."""
    p = batch[0].plan
    w, h = p.size
    gens = [torch.Generator().manual_seed(t.seed) for t in batch]
    init = den.to_model(torch.stack([t.plan.init for t in batch])) if p.init is not None else None
    base = den
    if p.tiles is not None:
        tile = (p.tiles.tile[1], p.tiles.tile[0]) if p.tiles.tile else None  # TiledDenoiser's is (H, W)
        base = TiledDenoiser(den, tile, p.tiles.overlap, p.job.wrap, batch=tile_batch)
    if p.guides is not None:
        from ..guidance import build_guided_denoiser

        # Guidance wraps the tiled denoiser: its CLIP cutouts come from the whole canvas.
        base = build_guided_denoiser(base, p.guides, p.job.prompt, device, cache=clip_cache)
    x0 = sample(base, (len(batch), 3, h, w), generator=gens, init=init,
                strength=p.job.strength if init is not None else 1.0, noise_mult=p.job.noise_mult,
                device=device, callback=callback, **p.sampling.sample_args())
    imgs = den.to_image(x0.float()).cpu()
    # Postprocessing differs per job inside a batch; grain continues each image's generator.
    return torch.stack([apply_chain(img[None], t.plan.post, [g])[0] for t, img, g in zip(batch, imgs, gens)])


def render(model: str | Path, jobs: list[Job], out_dir: str | Path, *, weights: str = "ema",
           batch_size: int = 8, device: str | torch.device = "cpu", overwrite: bool = False,
           presets: dict[str, str] | None = None, precision: str = "fp32",
           progress: bool = True, cancel: threading.Event | None = None) -> Result:
    """Render every job into out_dir, skipping finished images. One renderer per folder:
    FolderBusy (one line naming the holder) while another holds it. Setting `cancel` (from
    another thread) stops the sampler within a step: Cancelled is raised, the batch in
    flight is not written (the batches before it are)."""
    with folder_lock(out_dir, "renderer", inside=True):
        return _render(model, jobs, Path(out_dir), weights=weights, batch_size=batch_size, device=device,
                       overwrite=overwrite, presets=presets, precision=precision, progress=progress, cancel=cancel)


def _render(model: str | Path, jobs: list[Job], out_dir: Path, *, weights: str, batch_size: int,
            device: str | torch.device, overwrite: bool, presets: dict[str, str] | None, precision: str,
            progress: bool, cancel: threading.Event | None = None) -> Result:
    model_path = resolve_model_path(model)
    den, meta = load_denoiser(model_path, weights, device)
    sha = model_sha256(model_path)
    done = outputs.reconcile(out_dir)
    models = MergedModels(den, model_path, weights)
    size = (meta.image_size[1], meta.image_size[0])  # ModelMeta's is (height, width)
    stride = int(getattr(den.net, "factor", 8))
    plan = make_plan(jobs, Model(model_path, weights, size, stride, meta.default_sampling()), out_dir, presets,
                     models.check)
    if overwrite:
        redo = {t.rel for t in plan.tasks}
        done = {rel: rec for rel, rec in done.items() if rel not in redo}
        outputs.rewrite_manifest(out_dir, done.values())
    result = Result(skipped=sum(1 for t in plan.tasks if t.rel in done), failures=plan.failures)
    todo = [b for b in batches(plan.tasks, batch_size) if any(t.rel not in done for t in b)]
    write_batches(todo, Sampler(models, device, batch_size, precision, cancel=cancel), out_dir, sha, done, result,
                  progress)
    result.contact_sheets = contact_sheets(out_dir, jobs, done)
    return result


def write_batches(todo: list[list[Task]], sampler: Sampler, out_dir: Path, sha: str, done: dict[str, dict],
                  result: Result, progress: bool) -> None:
    """Sample and write each batch's missing images until done or stopped; a batch that
    fails is listed and the rest go on."""
    total = sum(1 for b in todo for t in b if t.rel not in done)
    bar = tqdm(total=total, unit="img", desc="rendering", disable=not progress, dynamic_ncols=True)
    with stop_on_sigint() as flag, bar:
        for batch in todo:
            if (cancel := getattr(sampler, "cancel", None)) is not None and cancel.is_set():
                raise Cancelled("stopped")
            if flag["stop"]:
                result.interrupted = True
                break
            try:
                imgs = sampler(batch)
            except (ValueError, RuntimeError) as e:
                result.failures.append(f"{batch[0].plan.job.where}: {e}")
                continue
            for t, img in zip(batch, imgs):
                if t.rel in done:
                    continue
                rec = record(t, sha)
                outputs.save_image(out_dir, t.rel, img, rec)
                done[t.rel] = rec
                result.written += 1
                bar.update(1)


def contact_sheets(out_dir: Path, jobs: list[Job], done: dict[str, dict]) -> list[Path]:
    """A sheet for every job whose images are all on disk, from this run or an earlier one."""
    sheets = []
    for job in jobs:
        rels = [o.rel for o in outputs_of(job)]
        if rels and all(r in done for r in rels):
            nrow = len(job.merge.weights) if job.merge else None
            sheet = outputs.write_contact_sheet(out_dir, outputs.job_dir_name(job.index, job.prompt),
                                                [out_dir / r for r in rels], nrow)
            if sheet:
                sheets.append(sheet)
    return sheets
