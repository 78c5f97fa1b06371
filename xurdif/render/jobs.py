"""Jobs: the typed `Job` every renderer takes, and `make_job`, which checks one job's options
(from a prompts-file line, a YAML job, the command line or the studio) into it. Reading the
files themselves is xurdif/render/job_files.py."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..diffusion.samplers import SAMPLERS
from ..diffusion.spacing import SPACINGS
from ..guidance.config import GuidanceCfg, parse_guidance
from ..options import Problem, coerce, convert, opt
from ..postprocess import parse_chain
from ..sampling.defaults import AUTO
from ..seeds import derive_seed
from ..shown import shown
from ..wording import OptionError, Voice, say


class JobError(OptionError):
    """A bad job: the message starts with `file:line:`."""


class Merge(NamedTuple):
    """A merge sweep: the job's seeds rendered with (1 - w) · the model + w · `model`, for each w."""

    model: str
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Job:
    """One prompt to render n times. Every option, its default and its range live here."""

    prompt: str = ""
    n: int = opt(1, min=1)     # images for this prompt
    seed: int | None = opt(None, min=0)  # first seed (then seed+1, ...); None: derived from (index, image)
    # Sampling: "auto" and None take the model's own default (xurdif/sampling/defaults.py).
    steps: int | None = opt(None, min=1, max=1000)  # network evaluations for a full (strength 1) render
    sampler: str = opt(AUTO, choices=(AUTO, *SAMPLERS))
    spacing: str = opt(AUTO, choices=(AUTO, *SPACINGS))
    # ddim's eta, edm's churn; above 1 a step would add more noise than the schedule holds.
    eta: float | None = opt(None, min=0, max=1, doc="0 deterministic, 1 DDPM-like")
    # logsnr/karras: the noise level of the last step; None: the model's (with its spacing), else 0.
    sigma_min: float | None = opt(None, min=0, max=80, doc="0 = the schedule's smallest")
    # (width, height); None: the init's aspect or the model's size.
    size: tuple[int, int] | None = opt(None, min=8, max=4096, doc="each side")
    init: str | None = None    # init image (img2img), relative to the job file
    # With init: the fraction of the schedule run.
    strength: float = opt(0.6, min=0, min_open=True, max=1, doc="1.0 = start from pure noise")
    noise_mult: float = opt(1.0, min=0, min_open=True)  # multiplies the start tensor (xurdif's noise level)
    post: str = ""             # postprocessing chain or preset, e.g. contrast:1.1,gamma:0.9
    guidance: GuidanceCfg | None = None  # for xurdif.guidance; the prompt is the CLIP text
    # Big canvases: overlapping tiles blended at every step (xurdif/diffusion/tiled.py).
    # auto: tiles of the model's size when the canvas is > 1.5x it; off; or a side in px.
    tile: str | int = opt("auto", min=8, max=4096, doc="a side in px; or auto, off")
    overlap: int | None = opt(None, min=0, doc="pixels")  # shared by neighbouring tiles; None: a quarter of the tile
    wrap: bool = False         # seamless texture: the canvas wraps around at its edges
    merge: Merge | None = None  # B.safetensors:0,0.5,1 - the same seeds rendered along a sweep towards model B
    # Where the job came from; not options.
    index: int = field(default=0, metadata={"option": False})
    source: str = field(default="", metadata={"option": False})
    line: int = field(default=0, metadata={"option": False})

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else "command line"

    def options(self) -> dict[str, Any]:
        """The options as JSON-able values (what goes into PNG metadata)."""
        out = {name: getattr(self, name) for name in OPTIONS}
        out["size"] = list(self.size) if self.size else None
        # Parsed, not JSON: render/plan.py records what they resolve to (the guides a job
        # runs, an image's merge weight); {} and "" say unset, as metadata readers expect.
        out["guidance"], out["merge"] = {}, ""
        return out

    def seeds(self) -> list[int]:
        if self.seed is not None:
            return [self.seed + k for k in range(self.n)]
        return [render_seed(self.index, k) for k in range(self.n)]


OPTIONS = [f.name for f in dataclasses.fields(Job) if f.metadata.get("option", True)]


def render_seed(index: int, k: int) -> int:
    """The seed of image k of job `index` when the job names none (31 bits: short file names)."""
    return derive_seed("render", index, k, bits=31)


def parse_size(value: Any) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        w, h = value
    elif isinstance(value, int) and not isinstance(value, bool):
        w = h = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(value))
        if not m:
            raise ValueError(f"size must be WIDTHxHEIGHT (e.g. 96x64) or one number, got {shown(value)}")
        w, h = int(m.group(1)), int(m.group(2) or m.group(1))
    if not all(isinstance(v, int) for v in (w, h)):
        raise ValueError(f"size sides must be integers, got {shown(value)}")
    return int(w), int(h)


def _seed(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "random", "")):
        return None
    ok, seed = coerce(int, value, text=True)
    if not ok:
        raise ValueError(f"seed must be an integer, got {shown(value)}")
    return seed


def _init(value: Any) -> str | None:
    if value is None or value == "":
        return None
    ok, path = coerce(str, value, text=True)
    if not ok:
        raise ValueError(f"init must be a string, got {shown(value)}")
    return path


def _guidance(value: Any) -> GuidanceCfg | None:
    if not isinstance(value, dict):
        raise ValueError("guidance must be a mapping (set it in a YAML job file)")
    return parse_guidance(value) if value else None


def _tile(value: Any) -> str | int:
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "no", "false")):
        return "off"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    ok, px = coerce(int, value, text=True)
    if not ok:
        raise ValueError(f"tile must be auto, off or a tile side in pixels, got {shown(value)}")
    return px


def parse_merge(value: Any) -> Merge | None:
    """`B.safetensors:0,0.25,1` -> Merge("B.safetensors", (0.0, 0.25, 1.0)); "" -> None."""
    if value is None or value == "":
        return None
    path, colon, weights = str(value).rpartition(":")
    try:
        ws = [float(w) for w in weights.split(",")] if colon and path else []
    except ValueError:
        ws = []
    if not ws or not all(math.isfinite(w) for w in ws):
        raise ValueError(f"merge must be MODEL:WEIGHT,WEIGHT,... (e.g. b.safetensors:0,0.5,1), got {shown(value)}")
    if len(set(ws)) != len(ws):
        raise ValueError(f"merge: a weight is given twice in {shown(value)}")
    return Merge(path, tuple(ws))


# Options with a shape of their own (their ranges are still the fields'); the rest are
# plain typed values, written as text on a prompt line or as YAML values in a job file.
PARSERS = {"size": parse_size, "seed": _seed, "init": _init, "guidance": _guidance, "tile": _tile,
           "merge": parse_merge}

# "n must be >= 1, got 0": the option first, as a prompt line has it.
JOB = Voice(unknown="unknown option {key!r}; {hint}valid: {valid}",
            choice="unknown {key} {value}; {hint}valid: {valid}",
            type="{key} must be {expected}, got {value}", range="{key} must be {span}{note}, got {value}")


def _check(job: Job, presets: dict[str, str]) -> list[Problem]:
    """What depends on more than one option (or on the presets): the fields check their own ranges."""
    if not job.prompt.strip():
        return [Problem("prompt", "invalid", message="empty prompt")]
    if job.seed is not None and job.seed >= 2**63 - job.n:  # every image's seed must fit in 63 bits
        return [Problem("seed", "invalid", message=f"seed + n must be below 2**63, got seed {job.seed}")]
    if isinstance(job.tile, int) and job.overlap is not None and job.overlap >= job.tile:
        return [Problem("overlap", "invalid",
                        message=f"overlap must be smaller than the tile ({job.tile} px), got {job.overlap}")]
    try:
        parse_chain(job.post, presets)
    except ValueError as e:
        return [Problem("post", "invalid", message=str(e))]
    return []


def _beside(values: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """init and merge model paths are relative to the job file."""
    if base_dir is None:
        return values
    if values.get("init") and not Path(values["init"]).is_absolute():
        values["init"] = str(base_dir / values["init"])
    merge = values.get("merge")
    if merge and not Path(merge.model).is_absolute():
        values["merge"] = merge._replace(model=str(base_dir / merge.model))
    return values


def make_job(opts: dict[str, Any], base: Job, where: tuple[str, int], presets: dict[str, str],
             base_dir: Path | None = None, key_lines: dict[str, int] | None = None) -> Job:
    """Apply options onto `base`, check them, return the Job (JobError on bad input).
    key_lines (YAML job files): the line of each key, and of each guidance key as
    `guidance.KEY`, so an error names the line of the key it is about."""
    source, line = where
    values, problems = convert(Job, opts, text=True, names=OPTIONS, parsers=PARSERS)
    if not problems:
        job = dataclasses.replace(base, **_beside(values, base_dir), source=source, line=line)
        problems = _check(job, presets)
    if not problems:
        return job
    p, lines = problems[0], key_lines or {}
    at = lines.get(p.key, lines.get(p.key.split(".")[0], line))
    place = f"{source}:{at}" if at else source  # the command line has no line number
    raise JobError(f"{place}: {say(p, JOB, OPTIONS)}", p.key)
