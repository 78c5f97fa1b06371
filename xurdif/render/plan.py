"""A render's plan: each job parsed, checked and resolved once, into the images it
renders and the batches they render in, before anything is sampled.

Sizes are (width, height) throughout, the order people write them in (96x64) and
PIL uses; torch's (height, width) appears only where run.py shapes tensors.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..data.images import BadImage, cover, read_picture, to_tensor
from ..diffusion.spacing import check_sigma_min
from ..guidance import GuidanceCfg, describe_guidance, parse_guidance
from ..postprocess import parse_chain
from ..sampling.defaults import Sampling, resolve
from . import outputs
from .jobs import Job


@dataclass(frozen=True)
class Model:
    """What planning needs to know of the model it renders with."""

    path: Path
    weights: str             # "ema" or "model"
    size: tuple[int, int]    # (width, height) it was trained at
    stride: int              # the network's: sides of a size taken from an init are multiples of it
    sampling: Sampling       # its default, for jobs that leave theirs to it


class Tiles(NamedTuple):
    tile: tuple[int, int] | None  # (width, height); None: the whole canvas, for wrap alone
    overlap: int


class Output(NamedTuple):
    """One image of a job: its number k, seed, merge weight and file in the output folder."""

    k: int
    seed: int
    weight: float | None
    rel: str


@dataclass(frozen=True)
class Planned:
    """A job resolved for rendering: what all its images share."""

    job: Job                        # with the sampler, steps, spacing and eta it renders with
    sampling: Sampling              # the same, with the model's fitted curve
    size: tuple[int, int]           # (width, height)
    tiles: Tiles | None             # None: one pass over the canvas
    guides: GuidanceCfg | None
    init: torch.Tensor | None       # [3, H, W] in [0, 1]
    post: list[tuple[str, float]]   # the postprocessing chain
    params: dict                    # its images' metadata, less the merge weight


class Task(NamedTuple):
    plan: Planned
    k: int
    seed: int
    weight: float | None  # a merge sweep's share of the other model
    rel: str


@dataclass
class Plan:
    tasks: list[Task]
    failures: list[str]  # one line per job that cannot render, naming it


def outputs_of(job: Job) -> list[Output]:
    """The job's images in contact-sheet order: a merge sweep's seeds one row each, its weights
    left to right. The one place output file names are made."""
    folder = outputs.job_dir_name(job.index, job.prompt)
    if job.merge:
        return [Output(k, s, w, f"{folder}/{s}-w{w:g}.png")
                for k, s in enumerate(job.seeds()) for w in job.merge.weights]
    return [Output(k, s, None, f"{folder}/{s}.png") for k, s in enumerate(job.seeds())]


def tiling(job: Job, size: tuple[int, int], model_size: tuple[int, int]) -> Tiles | None:
    """The tiles a job renders its canvas `size` in when it is big or wraps; None for one
    plain pass. Both sizes are (width, height)."""
    w, h = size
    mw, mh = model_size
    if job.tile == "auto":
        tile = (mw, mh) if max(w / mw, h / mh) > 1.5 else None
    elif job.tile == "off":
        tile = None
    else:
        tile = (job.tile, job.tile)
    if tile is not None and tile[0] >= w and tile[1] >= h:
        tile = None  # one tile covers the canvas
    if tile is None and not job.wrap:
        return None
    return Tiles(tile, job.overlap if job.overlap is not None else (min(tile) // 4 if tile else 0))


def load_init(path: str, size: tuple[int, int] | None, model_size: tuple[int, int], stride: int
              ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The init image as [3, H, W] in [0, 1] and the size (width, height) it renders at.

    Without a size the init's aspect ratio is kept, scaled so its longer side is the
    model's, each side a multiple of the network stride. With one, the init is scaled to
    cover it and centre-cropped (never distorted).
    """
    try:
        im = read_picture(path)  # upright, transparency on white, as in training
    except BadImage as e:
        raise ValueError(f"cannot read init image {path}: {e}") from None
    if size is None:
        scale = max(model_size) / max(im.size)
        size = tuple(max(stride, round(v * scale / stride) * stride) for v in im.size)
    # Without reducing_gap, as inits were always scaled: renders keep their pixels.
    return to_tensor(cover(im, size, reducing_gap=None)).float() / 255, size


def plan_job(job: Job, model: Model, out_dir: Path, presets: dict[str, str] | None,
             check_merge: Callable[[str], None]) -> Planned:
    """The job resolved against the model; a ValueError says what stops it rendering."""
    sampling = resolve(model.sampling, job.sampler, job.steps, job.spacing, job.eta, job.sigma_min)
    check_sigma_min(sampling.spacing, sampling.sigma_min)  # this job fails now, not its batch later
    # A job takes the model's sampler when it names none; what it renders with is what gets recorded.
    job = dataclasses.replace(job, sampler=sampling.sampler, steps=sampling.steps, spacing=sampling.spacing,
                              eta=sampling.eta, sigma_min=sampling.sigma_min)
    # A Job made in code may hold its guidance as written; a parsed one is returned as it is.
    guides = parse_guidance(job.guidance) if job.guidance else None
    described = describe_guidance(guides, job.prompt) if guides else {}
    init, size = load_init(job.init, job.size, model.size, model.stride) if job.init else (None, None)
    size = size or job.size or model.size
    outputs.safe_path(out_dir, outputs.job_dir_name(job.index, job.prompt))
    if job.merge:  # a model of another kind fails this job now
        check_merge(job.merge.model)
    tiles = tiling(job, size, model.size)
    # The model's and init image's absolute paths: a re-render command works from any folder.
    params = {**job.options(), "size": list(size), "model": str(Path(model.path).absolute()), "weights": model.weights,
              "init": str(Path(job.init).absolute()) if job.init else job.init,
              "guidance": described,
              "tiles": None if tiles is None else {"tile": list(tiles.tile) if tiles.tile else None,
                                                   "overlap": tiles.overlap, "wrap": job.wrap}}
    return Planned(job, sampling, size, tiles, guides, init, parse_chain(job.post, presets), params)


def make_plan(jobs: list[Job], model: Model, out_dir: Path, presets: dict[str, str] | None,
              check_merge: Callable[[str], None]) -> Plan:
    """Every job planned; a bad job fails alone."""
    plan = Plan([], [])
    for job in jobs:
        try:
            planned = plan_job(job, model, out_dir, presets, check_merge)
        except ValueError as e:
            plan.failures.append(f"{job.where}: {e}")
            continue
        plan.tasks += [Task(planned, *out) for out in outputs_of(planned.job)]
    return plan


def batch_key(task: Task) -> str:
    """Everything the images of one sampler call must share."""
    p, job = task.plan, task.plan.job
    key = {"size": p.size, "steps": job.steps, "sampler": job.sampler, "eta": job.eta, "spacing": job.spacing,
           "sigma_min": job.sigma_min, "noise_mult": job.noise_mult, "strength": job.strength if job.init else 1.0,
           "init": bool(job.init), "tiles": p.tiles, "wrap": job.wrap}
    if job.merge:
        key["merge"] = [job.merge.model, task.weight]
    if p.guides is not None:  # a guided denoiser is built per job
        key["job"] = job.index
    return json.dumps(key, sort_keys=True)


def batches(tasks: list[Task], batch_size: int) -> list[list[Task]]:
    """The tasks grouped by batch_key, in order of first appearance, cut into batches. A
    rerun plans the same batches however many images exist, so every pixel is the same."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(batch_key(t), []).append(t)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def record(task: Task, model_sha256: str) -> dict:
    """The image's manifest line, also kept in its PNG."""
    job, params = task.plan.job, dict(task.plan.params)
    if task.weight is not None:
        params["merge"] = {"model": job.merge.model, "weight": task.weight}
    return {"file": task.rel, "index": job.index, "k": task.k, "prompt": job.prompt,
            "seed": task.seed, "model_sha256": model_sha256, "params": params}
