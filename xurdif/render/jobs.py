"""Job lists: a plain prompts file or a YAML job file, parsed into typed `Job`s.

Prompts file: one prompt per line, `#` starts a comment, blank lines are
ignored, options follow a `|`:

    a red fox | seed=7 n=4 steps=30 init=fox.png strength=0.6

YAML job file (full control):

    defaults: {steps: 30, sampler: dpmpp_2m}
    presets: {mine: "contrast:1.2,grain:0.02"}   # postprocessing presets
    jobs:
      - a plain prompt
      - {prompt: a red fox, n: 4, post: mine, guidance: {clip_weights: clip.safetensors, scale: 0.05}}

Precedence: Job defaults < YAML `defaults:` < command-line flags < the job's own
options. A job's index (used in output names and derived seeds) is its
position among the file's job lines, malformed lines included, so fixing one
line never renumbers the others.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import yamlfile
from ..diffusion.samplers import SAMPLERS
from ..diffusion.spacing import SPACINGS
from ..sampling.defaults import AUTO
from ..options import Problem, close_matches, coerce, convert
from ..postprocess import parse_chain
from ..seeds import derive_seed
from ..shown import shown


class JobError(ValueError):
    """A bad job: the message starts with `file:line:`."""


@dataclass(frozen=True)
class Job:
    """One prompt to render n times. Every option and its default lives here."""

    prompt: str = ""
    n: int = 1                 # images for this prompt
    seed: int | None = None    # first seed (then seed+1, ...); None: derived from (index, image)
    # Sampling: "auto" and None take the model's own default (xurdif/sampling/defaults.py).
    steps: int | None = None   # network evaluations for a full (strength 1) render
    sampler: str = field(default=AUTO, metadata={"choices": (AUTO, *SAMPLERS)})
    spacing: str = field(default=AUTO, metadata={"choices": (AUTO, *SPACINGS)})
    eta: float | None = None   # ddim: 0 deterministic, 1 DDPM-like noise; edm: churn 0..1
    size: tuple[int, int] | None = None  # (width, height); None: init's aspect or the model's size
    init: str | None = None    # init image (img2img), relative to the job file
    strength: float = 0.6      # with init: fraction of the schedule run; 1.0 = pure noise start
    noise_mult: float = 1.0    # multiplies the start tensor (xurdif's noise level)
    post: str = ""             # postprocessing chain or preset, e.g. contrast:1.1,gamma:0.9
    guidance: dict = field(default_factory=dict)  # for xurdif.guidance; the prompt is the CLIP text
    # Big canvases: overlapping tiles blended at every step (xurdif/diffusion/tiled.py).
    tile: str | int = "auto"   # auto: tiles of the model's size when the canvas is > 1.5x it; off; or a side in px
    overlap: int | None = None  # px shared by neighbouring tiles; None: a quarter of the tile
    wrap: bool = False         # seamless texture: the canvas wraps around at its edges
    merge: str = ""            # B.safetensors:0,0.5,1 - the same seeds rendered along a sweep towards model B
    # Where the job came from; not options.
    index: int = field(default=0, metadata={"option": False})
    source: str = field(default="", metadata={"option": False})
    line: int = field(default=0, metadata={"option": False})

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else "command line"

    def options(self) -> dict[str, Any]:
        """The options as JSON-able values (what goes into PNG metadata)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("option", True)}
        out["size"] = list(self.size) if self.size else None
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
    if not all(isinstance(v, int) and 8 <= v <= 4096 for v in (w, h)):
        raise ValueError(f"size sides must be integers in 8..4096, got {shown(value)}")
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


def _guidance(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("guidance must be a mapping (set it in a YAML job file)")
    return dict(value)


def _tile(value: Any) -> str | int:
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "no", "false")):
        return "off"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    ok, px = coerce(int, value, text=True)
    if not ok or not 8 <= px <= 4096:
        raise ValueError(f"tile must be auto, off or a tile side in pixels (8..4096), got {shown(value)}")
    return px


def parse_merge(value: str) -> tuple[str, list[float]]:
    """`B.safetensors:0,0.25,1` -> ("B.safetensors", [0.0, 0.25, 1.0])."""
    path, colon, weights = str(value).rpartition(":")
    try:
        ws = [float(w) for w in weights.split(",")] if colon and path else []
    except ValueError:
        ws = []
    if not ws or not all(math.isfinite(w) for w in ws):
        raise ValueError(f"merge must be MODEL:WEIGHT,WEIGHT,... (e.g. b.safetensors:0,0.5,1), got {shown(value)}")
    if len(set(ws)) != len(ws):
        raise ValueError(f"merge: a weight is given twice in {shown(value)}")
    return path, ws


def _merge(value: Any) -> str:
    if value is None or value == "":
        return ""
    parse_merge(value)
    return str(value)


# Options with a shape of their own; the rest are plain typed values, written
# as text on a prompt line or as YAML values in a job file.
PARSERS = {"size": parse_size, "seed": _seed, "init": _init, "guidance": _guidance, "tile": _tile,
           "merge": _merge}


def _say(p: Problem) -> str:
    if p.kind == "unknown":
        hint = f"did you mean {p.hint[0]!r}? " if p.hint else ""
        return f"unknown option {p.key!r}; {hint}valid: {', '.join(OPTIONS)}"
    if p.kind == "choice":
        hint = f"did you mean {p.hint[0]!r}? " if p.hint else ""
        return f"unknown {p.key} {shown(p.value)}; {hint}valid: {', '.join(p.choices)}"
    if p.kind == "invalid":
        return p.message
    return f"{p.key} must be {p.expected}, got {shown(p.value)}"


def _line_of(message: str, key_lines: dict[str, int], line: int) -> int:
    """The line of the key an error is about (`guidance.scale`, `seed`), else the job's."""
    m = re.match(r"(?:guidance(?:\.(\w+))?: (?:unknown key '(\w+)')?|unknown option '(\w+)'|(\w+) must )",
                 message)
    if not m:
        return line
    sub = m.group(1) or m.group(2)
    if m.group(3) or m.group(4):
        return key_lines.get(m.group(3) or m.group(4), line)
    return key_lines.get(f"guidance.{sub}", key_lines.get("guidance", line))


def make_job(opts: dict[str, Any], base: Job, where: tuple[str, int], presets: dict[str, str],
             base_dir: Path | None = None, key_lines: dict[str, int] | None = None) -> Job:
    """Apply options onto `base`, check them, return the Job (JobError on bad input).
    key_lines (YAML job files): the line of each key, and of each guidance key as
    `guidance.KEY`, so an error names the line of the key it is about."""
    source, line = where
    key_lines = key_lines or {}

    def place(message: str) -> str:
        at = _line_of(message, key_lines, line)
        return f"{source}:{at}" if at else source  # the command line has no line number

    values, problems = convert(Job, opts, text=True, names=OPTIONS, parsers=PARSERS)
    if problems:
        message = _say(problems[0])
        raise JobError(f"{place(message)}: {message}")
    if values.get("init") and base_dir is not None and not Path(values["init"]).is_absolute():
        values["init"] = str(base_dir / values["init"])
    if values.get("merge") and base_dir is not None:
        path, _ = parse_merge(values["merge"])
        if not Path(path).is_absolute():
            values["merge"] = str(base_dir / values["merge"])
    job = dataclasses.replace(base, **values, source=source, line=line)
    try:
        validate(job, presets)
        if job.guidance and key_lines:  # a job file: check guidance here, where its lines are known
            from ..guidance import parse_guidance

            parse_guidance(job.guidance)
    except ValueError as e:
        raise JobError(f"{place(str(e))}: {e}") from None
    return job


def validate(job: Job, presets: dict[str, str]) -> None:
    if not job.prompt.strip():
        raise ValueError("empty prompt")
    if job.n < 1:
        raise ValueError(f"n must be >= 1, got {job.n}")
    if job.steps is not None and not 1 <= job.steps <= 1000:
        raise ValueError(f"steps must be in 1..1000, got {job.steps}")
    if job.eta is not None and not 0 <= job.eta <= 1:  # above 1 a step adds more noise than the schedule holds
        raise ValueError(f"eta must be in 0..1 (0 deterministic, 1 DDPM-like), got {job.eta}")
    if not 0 < job.strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1.0 = start from pure noise), got {job.strength}")
    if job.noise_mult <= 0:
        raise ValueError(f"noise_mult must be > 0, got {job.noise_mult}")
    if job.seed is not None and not 0 <= job.seed < 2**63 - job.n:
        raise ValueError(f"seed must be a non-negative integer, got {job.seed}")
    if job.overlap is not None and job.overlap < 0:
        raise ValueError(f"overlap must be >= 0 pixels, got {job.overlap}")
    if isinstance(job.tile, int) and job.overlap is not None and job.overlap >= job.tile:
        raise ValueError(f"overlap must be smaller than the tile ({job.tile} px), got {job.overlap}")
    parse_chain(job.post, presets)


def split_inline(text: str) -> tuple[str, dict[str, str]]:
    """`a red fox | seed=7 n=4` -> ("a red fox", {"seed": "7", "n": "4"})."""
    prompt, _, rest = text.partition("|")
    opts: dict[str, str] = {}
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value after '|', got {shown(token)}")
        opts[key.strip()] = value.strip()
    return prompt.strip(), opts


def parse_prompts_text(text: str, source: str, base: Job, presets: dict[str, str] | None = None,
                       base_dir: Path | None = None) -> tuple[list[Job], list[str]]:
    """Jobs from a prompts file's text, plus one error line per malformed line."""
    presets = presets or {}
    jobs: list[Job] = []
    errors: list[str] = []
    index = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            prompt, opts = split_inline(content)
            job = make_job({"prompt": prompt, **opts}, dataclasses.replace(base, index=index),
                           (source, lineno), presets, base_dir)
            jobs.append(job)
        except JobError as e:
            errors.append(str(e))
        except ValueError as e:
            errors.append(f"{source}:{lineno}: {e}")
        index += 1
    return jobs, errors


class _LineLoader(yamlfile.Loader):
    """The safe loader refusing duplicate keys; we read line numbers from the composed node tree."""


def key_lines(node: yaml.Node) -> dict[str, int]:
    """A job mapping node's keys and its guidance keys (`guidance.KEY`) -> their lines."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines[str(k.value)] = k.start_mark.line + 1
            if k.value == "guidance" and isinstance(v, yaml.MappingNode):
                lines.update({f"guidance.{gk.value}": gk.start_mark.line + 1 for gk, _ in v.value})
    return lines


def parse_yaml_text(text: str, source: str, base: Job, cli_defaults: dict[str, Any] | None = None,
                    base_dir: Path | None = None) -> tuple[list[Job], list[str], dict[str, str]]:
    """Jobs, error lines and postprocessing presets from a YAML job file."""
    try:
        loader = _LineLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
            yamlfile.check_size(data)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise JobError(f"{source}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise JobError(f"{source}:1: a job file is a mapping with keys defaults, presets, jobs")
    lines = {k.value: k.start_mark.line + 1 for k, _ in root.value}
    for key in data:
        if key not in ("defaults", "presets", "jobs"):
            close = close_matches(key, ["defaults", "presets", "jobs"])
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise JobError(f"{source}:{lines.get(key, 1)}: unknown key {key!r}; {hint}valid: defaults, presets, jobs")
    presets = data.get("presets") or {}
    if not isinstance(presets, dict) or not all(isinstance(v, str) for v in presets.values()):
        raise JobError(f"{source}:{lines.get('presets', 1)}: presets must map names to chains like 'contrast:1.1'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise JobError(f"{source}:{lines.get('defaults', 1)}: defaults must be a mapping of job options")
    # Check the defaults once, with a placeholder prompt, for their own line numbers.
    defaults_node = next((v for k, v in root.value if k.value == "defaults"), None)
    base = make_job({"prompt": "defaults", **defaults}, base, (source, lines.get("defaults", 1)),
                    presets, base_dir, key_lines(defaults_node) if defaults_node is not None else None)
    if cli_defaults:
        base = dataclasses.replace(base, **cli_defaults)
    base = dataclasses.replace(base, prompt="")
    items = data.get("jobs")
    jobs_node = next((v for k, v in root.value if k.value == "jobs"), None)
    if not isinstance(items, list) or jobs_node is None:
        raise JobError(f"{source}:{lines.get('jobs', 1)}: 'jobs' must be a list of prompts or mappings")
    jobs: list[Job] = []
    errors: list[str] = []
    for index, (item, node) in enumerate(zip(items, jobs_node.value)):
        line = node.start_mark.line + 1
        opts = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(opts, dict):
            errors.append(f"{source}:{line}: a job is a prompt string or a mapping, got {shown(item)}")
            continue
        try:
            jobs.append(make_job(opts, dataclasses.replace(base, index=index), (source, line), presets, base_dir,
                                 key_lines(node)))
        except JobError as e:
            errors.append(str(e))
    return jobs, errors, presets


def load_jobs(path: str | Path, base: Job, cli_defaults: dict[str, Any] | None = None
              ) -> tuple[list[Job], list[str], dict[str, str]]:
    """Jobs from a .txt prompts file or a .yaml/.yml job file next to its init images."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JobError(f"{path}: cannot read job file: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml_text(text, str(path), base, cli_defaults, path.parent)
    base = dataclasses.replace(base, **(cli_defaults or {}))
    jobs, errors = parse_prompts_text(text, str(path), base, None, path.parent)
    return jobs, errors, {}
