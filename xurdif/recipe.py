"""Recipes: typed dataclasses are the single source of truth for every setting and
its default. YAML is loaded with yaml.safe_load, merged over `base:` recipes and
`a.b=c` command-line overrides, then validated as a whole so that every error is
reported before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


def opt(default: Any, *, min: float | None = None, max: float | None = None, doc: str = "") -> Any:
    """A field with a default, an allowed range and a one-line explanation."""
    md = {"min": min, "max": max, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=md)
    return field(default=default, metadata=md)


@dataclass(frozen=True)
class DataCfg:
    source: Literal["folder", "hf", "shards"] = opt("folder", doc="where images come from")
    path: str = opt("", doc="image folder (source: folder), relative to the working directory")
    size: int = opt(64, min=8, max=4096, doc="training resolution in pixels (square)")
    crop: Literal["center", "random"] = opt("center", doc="crop after the aspect-preserving resize")
    hflip: bool = opt(False, doc="random horizontal flip")
    background: str = opt("#ffffff", doc="colour transparent pixels are composited on")
    max_image_pixels: int = opt(89_478_485, min=1, doc="larger images are skipped (decompression bombs)")
    cache_max_images: int = opt(20000, min=0, doc="decode at most this many images once into memory")
    hf_dataset: str = opt("", doc="source: hf — a saved dataset folder, an imagefolder or a cached hub name")
    hf_split: str = opt("train", doc="source: hf — the split to read")
    image_column: str = opt("image", doc="source: hf — the column holding images")
    shards: str = opt("", doc="source: shards — tar paths or brace pattern, e.g. data/s-{000..009}.tar")
    shuffle_buffer: int = opt(1000, min=0, doc="source: shards — shuffle buffer size")
    allow_pipe: bool = opt(False, doc="source: shards — allow pipe: URLs (runs a shell command)")
    allow_pickle: bool = opt(False, doc="source: shards — allow pickled members (can run code)")
    num_workers: int = opt(0, min=0, max=64, doc="loader worker processes (streamed sources)")


@dataclass(frozen=True)
class ModelCfg:
    preset: Literal["tiny", "small", "base", "large"] = opt("small", doc="U-Net size preset")
    base_width: Optional[int] = opt(None, min=8, doc="channels at full resolution (overrides preset)")
    mults: Optional[list[int]] = opt(None, doc="channel multiplier per level (overrides preset)")
    blocks_per_level: Optional[int] = opt(None, min=1, max=8, doc="residual blocks per level")
    attn_levels: Optional[list[int]] = opt(None, doc="levels with self-attention (default: lowest two)")
    head_dim: Optional[int] = opt(None, min=8, doc="attention head width")
    dropout: float = opt(0.0, min=0.0, max=0.9, doc="dropout in residual blocks")
    init_from: str = opt("", doc="start from the weights of a model file (.safetensors), e.g. an import")


@dataclass(frozen=True)
class DiffusionCfg:
    schedule: Literal["cosine", "linear"] = opt("cosine", doc="noise schedule")
    timesteps: int = opt(1000, min=10, max=100000, doc="number of discrete timesteps T")
    prediction: Literal["eps", "x0", "v"] = opt("eps", doc="what the network predicts")


@dataclass(frozen=True)
class LossCfg:
    l2: float = opt(1.0, min=0.0, doc="weight of mean squared error")
    l1: float = opt(0.0, min=0.0, doc="weight of mean absolute error")
    edge_l1: float = opt(0.0, min=0.0, doc="weight of edge-weighted L1 on the clean image")
    ssim: float = opt(0.0, min=0.0, doc="weight of 1 - SSIM on the clean image")
    ms_ssim: float = opt(0.0, min=0.0, doc="weight of 1 - MS-SSIM (needs size >= 161)")
    space: Literal["target", "x0"] = opt("target", doc="l1/l2 on the network's target or on the clean image")
    edge_threshold: float = opt(0.08, min=0.0, doc="Sobel magnitude (on [0,1] grey) that counts as edge")
    edge_weight: float = opt(4.0, min=0.0, doc="extra weight on edge pixels: 1 + edge_weight")
    min_snr_gamma: Optional[float] = opt(None, min=0.0, doc="min-SNR-gamma loss weighting (e.g. 5)")


@dataclass(frozen=True)
class OptimCfg:
    lr: float = opt(2e-4, min=0.0, max=1.0, doc="peak learning rate")
    betas: list[float] = opt([0.9, 0.99], doc="AdamW betas")
    eps: float = opt(1e-8, min=0.0, doc="AdamW epsilon")
    weight_decay: float = opt(0.0, min=0.0, doc="AdamW weight decay")
    grad_clip: float = opt(1.0, min=0.0, doc="clip gradient norm (0 = off)")
    warmup_images: int = opt(0, min=0, doc="linear LR warmup length in images seen")
    lr_schedule: Literal["constant", "cosine"] = opt("constant", doc="after warmup")
    min_lr_ratio: float = opt(0.1, min=0.0, max=1.0, doc="cosine: final lr as a fraction of peak")


@dataclass(frozen=True)
class TrainCfg:
    batch_size: int = opt(16, min=1, doc="images per process per micro-batch")
    grad_accum: int = opt(1, min=1, doc="micro-batches per optimizer step")
    images: Optional[int] = opt(None, min=1, doc="training length in images seen (or set steps)")
    steps: Optional[int] = opt(None, min=1, doc="training length in optimizer steps (or set images)")
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", doc="autocast precision")
    seed: int = opt(0, min=0, doc="every random draw derives from (seed, images seen)")
    output_dir: str = opt("", doc="run folder (default runs/<recipe name>)")
    max_nonfinite: int = opt(20, min=1, doc="stop after this many non-finite steps in a row")


@dataclass(frozen=True)
class EmaCfg:
    kind: Literal["warmup", "power", "off"] = opt("warmup", doc="EMA decay rule")
    decay: float = opt(0.999, min=0.0, max=1.0, doc="warmup: maximum decay")
    warmup_power: float = opt(0.75, min=0.0, doc="warmup: decay = 1 - (1 + step)^-power, capped")
    std: float = opt(0.05, min=0.001, max=0.28, doc="power: relative EMA length (EDM2 sigma_rel)")


@dataclass(frozen=True)
class CheckpointCfg:
    every_steps: int = opt(1000, min=1, doc="save a checkpoint every N optimizer steps")
    keep_last: int = opt(3, min=1, doc="keep this many newest checkpoints")
    keep_every: int = opt(0, min=0, doc="also keep every N-th step as a milestone (0 = none)")


@dataclass(frozen=True)
class LogCfg:
    every_steps: int = opt(10, min=1, doc="TensorBoard scalars every N steps")
    tensorboard: bool = opt(True, doc="write TensorBoard logs into <run>/tb")


@dataclass(frozen=True)
class SamplesCfg:
    every_steps: int = opt(500, min=0, doc="EMA sample grid every N steps (0 = only at the end)")
    n: int = opt(16, min=1, max=256, doc="images in the grid")
    steps: int = opt(50, min=1, max=1000, doc="sampler steps")
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] = opt("dpmpp_2m", doc="sampler for the grid")
    seed: int = opt(1234, min=0, doc="fixed noise seed, so grids are comparable over time")


@dataclass(frozen=True)
class EvalCfg:
    kid_every_steps: int = opt(0, min=0, doc="in-training KID of EMA samples every N steps (0 = off)")
    kid_samples: int = opt(64, min=8, max=10000, doc="EMA samples per KID measurement (bounds its cost)")
    kid_steps: int = opt(20, min=1, max=1000, doc="sampler steps for those samples")
    real_images: int = opt(1000, min=8, doc="training images the samples are compared with")


@dataclass(frozen=True)
class Recipe:
    name: str = opt("", doc="run name (default: the recipe file's stem)")
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    diffusion: DiffusionCfg = field(default_factory=DiffusionCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    log: LogCfg = field(default_factory=LogCfg)
    samples: SamplesCfg = field(default_factory=SamplesCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir or Path("runs") / self.name)

    @property
    def global_batch_per_process(self) -> int:
        return self.train.batch_size * self.train.grad_accum


class RecipeError(ValueError):
    """All problems of a recipe, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------- YAML merging


def _read_yaml(path: Path, problems: list[str]) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        problems.append(f"{path}: recipe file not found")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problems.append(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
        return {}
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(path: Path, problems: list[str], chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        problems.append(f"{path}: base: circular inheritance ({' -> '.join(p.name for p in chain + (path,))})")
        return {}
    data = _read_yaml(path, problems)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        problems.append(f"{path}: base: must be a path to another recipe, got {base!r}")
        return data
    base_path = (path.parent / base)
    if not base_path.is_file():
        problems.append(f"{path}: base: {base} not found (looked for {base_path})")
        return data
    return _deep_merge(_load_with_bases(base_path, problems, chain + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError([f"override {text!r}: expected section.key=value, e.g. train.images=5000"])
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError([f"override {'.'.join(keys)}: {k} is not a section"])
    node[keys[-1]] = value


# ---------------------------------------------------------------- validation


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(dotted: str, valid: list[str]) -> str:
    section, _, leaf = dotted.rpartition(".")
    same = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    near = [same[m] for m in difflib.get_close_matches(leaf, list(same), n=1, cutoff=0.6)]
    if not near:  # maybe the key lives in another section
        by_leaf = {k.rpartition(".")[2]: k for k in valid}
        leaves = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        near = [by_leaf[leaves[0]]] if leaves else difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]}?" if near else ""


def _describe_type(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return " or ".join(_describe_type(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(t)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def _coerce(t: Any, v: Any) -> tuple[bool, Any]:
    """(ok, value): check v against type t, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return type(None) in typing.get_args(t), None
        for a in typing.get_args(t):
            if a is not type(None):
                ok, out = _coerce(a, v)
                if ok:
                    return True, out
        return False, v
    if origin is Literal:
        return v in typing.get_args(t), v
    if origin is list:
        if not isinstance(v, list):
            return False, v
        items = [_coerce(typing.get_args(t)[0], x) for x in v]
        return all(ok for ok, _ in items), [x for _, x in items]
    if t is bool:
        return isinstance(v, bool), v
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if t is float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return True, float(v)
            except ValueError:
                return False, v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return ok, float(v) if ok else v
    if t is str:
        return isinstance(v, str), v
    return False, v


def _build(cls: type, data: Any, prefix: str, where: str, valid: list[str], problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{where}: {prefix.rstrip('.') or 'recipe'}: must be a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            problems.append(f"{where}: {dotted}: unknown key{_suggest(dotted, valid)}")
            continue
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value if value is not None else {}, dotted + ".", where, valid, problems)
            continue
        ok, value = _coerce(t, value)
        if not ok:
            problems.append(f"{where}: {dotted}: got {value!r}; expected {_describe_type(t)}")
            continue
        md = names[key].metadata
        nums = value if isinstance(value, list) else [value]
        for x in nums:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                if md.get("min") is not None and x < md["min"] or md.get("max") is not None and x > md["max"]:
                    lo = md.get("min") if md.get("min") is not None else "-inf"
                    hi = md.get("max") if md.get("max") is not None else "inf"
                    problems.append(f"{where}: {dotted}: {value!r} is out of range; allowed {lo} to {hi}")
                    break
        kwargs[key] = value
    return cls(**kwargs)


def _check_consistency(r: Recipe, where: str, problems: list[str]) -> None:
    if r.train.images is None and r.train.steps is None:
        problems.append(f"{where}: train.images: set the training length (train.images or train.steps)")
    if r.train.images is not None and r.train.steps is not None:
        problems.append(f"{where}: train.steps: set train.images or train.steps, not both")
    if r.data.source == "folder" and not r.data.path:
        problems.append(f"{where}: data.path: required for data.source: folder")
    if r.data.source == "hf" and not r.data.hf_dataset:
        problems.append(f"{where}: data.hf_dataset: required for data.source: hf")
    if r.data.source == "shards" and not r.data.shards:
        problems.append(f"{where}: data.shards: required for data.source: shards")
    terms = ("l2", "l1", "edge_l1", "ssim", "ms_ssim")
    if not any(getattr(r.loss, k) > 0 for k in terms):
        problems.append(f"{where}: loss: every term weight is 0; give one of {', '.join(terms)} a weight > 0")
    if r.loss.ms_ssim > 0 and r.data.size < 161:
        problems.append(f"{where}: loss.ms_ssim: needs data.size >= 161 (five scales), got {r.data.size}; use loss.ssim")
    if len(r.optim.betas) != 2 or not all(0 <= b < 1 for b in r.optim.betas):
        problems.append(f"{where}: optim.betas: expected two numbers in [0, 1), got {r.optim.betas}")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, inherit, override and validate; raise RecipeError listing every problem."""
    path = Path(path)
    problems: list[str] = []
    data = _load_with_bases(path, problems)
    if problems:
        raise RecipeError(problems)
    valid = _all_keys(Recipe)
    for text in overrides:
        keys, value = parse_override(text)
        dotted = ".".join(keys)
        if dotted not in valid and not any(v.startswith(dotted + ".") for v in valid):
            problems.append(f"override {dotted}: unknown key{_suggest(dotted, valid)}")
            continue
        _apply_override(data, keys, value)
    data.setdefault("name", path.stem)
    recipe = _build(Recipe, data, "", str(path), valid, problems)
    if not problems:
        _check_consistency(recipe, str(path), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def recipe_from_yaml(text: str, where: str = "recipe") -> Recipe:
    problems: list[str] = []
    recipe = _build(Recipe, yaml.safe_load(text) or {}, "", where, _all_keys(Recipe), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(recipe_to_yaml(recipe).encode()).hexdigest()[:16]


def describe_keys() -> str:
    """Every key with its default and meaning, for --help and the README."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                walk(t, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {prefix}{f.name} = {default!r}  ({_describe_type(t)}) {f.metadata.get('doc', '')}")

    walk(Recipe, "")
    return "\n".join(lines)
