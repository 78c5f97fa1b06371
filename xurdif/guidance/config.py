"""The guidance options: one frozen dataclass is the single source of truth for
every key a job's `guidance:` dict may hold, its type and its default.

`parse_guidance(dict)` validates a job's dict against it (through
xurdif.options): an unknown key names the closest valid one, a value of the
wrong type or out of its field's range names what is valid.
Weighted prompt lists are normalised here, so the rest of the package only sees
tuples of `Weighted(value, weight)`.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass

from ..options import Problem, coerce, convert, opt
from ..shown import shown
from ..wording import OptionError, Voice, say


class GuidanceError(OptionError):
    """Bad guidance options or unavailable guidance resources (one clear line)."""


class Weighted(typing.NamedTuple):
    value: str  # a text prompt or an image path
    weight: float


CLIP_LOSSES = ("cosine", "spherical")
TARGET_LOSSES = ("ssim", "l2")


@dataclass(frozen=True)
class GuidanceCfg:
    # CLIP: an open_clip architecture name, and a local checkpoint path, a
    # pretrained tag already in the local cache, or "none" (random weights).
    clip_model: str = "ViT-B-32"
    clip_weights: str = "openai"
    # Text prompts; empty means the job's prompt. "a red fox:1, blurry:-0.5".
    text: tuple[Weighted, ...] = ()
    text_weight: float = 1.0
    clip_loss: str = opt("cosine", choices=CLIP_LOSSES)  # embedding distance
    # Image prompts (CLIP similarity to pictures): "a.png:1, b.png:0.5".
    image_prompts: tuple[Weighted, ...] = ()
    image_weight: float = 1.0
    # Random cutouts fed to CLIP, side = cut_min..cut_max of the image's shorter
    # side, aspect ratio within 1/cut_aspect..cut_aspect.
    cutouts: int = opt(16, min=1)
    cut_min: float = opt(0.4, min=0, min_open=True, max=1, doc="a fraction")
    cut_max: float = 1.0  # cut_min..1 (_check_order)
    cut_aspect: float = opt(1.25, min=1, doc="a ratio")  # 1 = square cutouts
    cut_flip: bool = True
    cut_seed: int = 0
    # Target picture in pixel space, optional mask (white = applies).
    target: str = ""
    target_weight: float = 1.0
    target_loss: str = opt("ssim", choices=TARGET_LOSSES)
    target_mask: str = ""
    # Gram-matrix style from CLIP image-tower blocks; () = the first four.
    style: str = ""
    style_weight: float = 1.0
    style_layers: tuple[int, ...] = opt((), min=0, doc="block indices")
    # How the gradient is applied. Default: on the predicted x0, an RMS step of
    # `scale` (image units) times sqrt(ᾱ)^power per denoiser call.
    scale: float = opt(0.02, min=0)
    power: float = 1.0
    # Active while t_min <= t / (T-1) <= t_max.
    t_min: float = opt(0.0, min=0, max=1, doc="a fraction of the schedule")
    t_max: float = 1.0  # t_min..1 (_check_order)
    through_unet: bool = False  # backprop through the U-Net to x_t instead
    unet_lr: float = opt(0.2, min=0)  # eps step (RMS units) per call with through_unet


KEYS = tuple(f.name for f in dataclasses.fields(GuidanceCfg))
_TYPES = typing.get_type_hints(GuidanceCfg)

# A prompt ends at ":<number>" followed by a comma or the end, so commas inside
# an unweighted prompt ("a fox, in snow") stay part of it.
_WEIGHTED = re.compile(r"\s*(.+?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:,|$)")


def parse_weighted(spec: str | list | tuple, key: str, item_key: str) -> tuple[Weighted, ...]:
    """"a:1, b:-0.5" or ["a", {item_key: "b", "weight": -0.5}] -> Weighted tuples."""
    if isinstance(spec, str):
        out, pos = [], 0
        while pos < len(spec):
            m = _WEIGHTED.match(spec, pos)
            if m is None:
                rest = spec[pos:].strip().strip(",").strip()
                if rest:
                    out.append(Weighted(rest, 1.0))
                break
            out.append(Weighted(m.group(1), float(m.group(2))))
            pos = m.end()
        return tuple(w for w in out if w.value)
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            if isinstance(item, str):
                out.extend(parse_weighted(item, key, item_key))
            elif isinstance(item, dict) and set(item) <= {item_key, "weight"} and item_key in item:
                out.append(Weighted(str(item[item_key]), _number(item.get("weight", 1.0), f"{key}.weight")))
            else:
                raise GuidanceError(
                    f"guidance.{key}: bad item {shown(item)}; valid: a string or "
                    f"{{{item_key}: ..., weight: <number>}}")
        return tuple(out)
    raise GuidanceError(f"guidance.{key}: expected a string or a list, got {type(spec).__name__}")


def _number(v, key: str) -> float:
    ok, x = coerce(float, v)
    if not ok:
        raise GuidanceError(f"guidance.{key}: expected a finite number, got {v!r}")
    return x


def _style_layers(v) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    ok, layers = coerce(tuple[int, ...], v)
    if not ok:
        raise GuidanceError(f"guidance.style_layers: expected a list of block indices, got {v!r}")
    return layers


# Fields with a shape of their own; every other field is a plain typed value.
_PARSERS = {
    "text": lambda v: parse_weighted(v, "text", "text"),
    "image_prompts": lambda v: parse_weighted(v, "image_prompts", "image"),
    "style_layers": _style_layers,
}


GUIDANCE = Voice(unknown="guidance: unknown key {key!r}; {hint}valid keys: {valid}",
                 choice="guidance.{key}: {value} is invalid; {hint}valid: {valid}",
                 type="guidance.{key}: expected {expected}, got {value}",
                 range="guidance.{key}: {value} is invalid; valid: {what} {span}",
                 dots=False, number="a finite number")


def _check_order(cfg: GuidanceCfg) -> None:
    """The bounds that depend on another key."""
    for key, low, what in (("cut_max", "cut_min", "a fraction"), ("t_max", "t_min", "a fraction of the schedule")):
        lo, value = getattr(cfg, low), getattr(cfg, key)
        if not lo <= value <= 1:
            raise GuidanceError(say(Problem(key, "range", value, lo=f"{low}={lo}", hi=1, doc=what), GUIDANCE), key)


def parse_guidance(options: dict | None) -> GuidanceCfg:
    """A job's guidance dict -> validated GuidanceCfg (missing keys take defaults)."""
    if options is None:
        options = {}
    if isinstance(options, GuidanceCfg):
        return options
    if not isinstance(options, dict):
        raise GuidanceError(f"guidance: expected a mapping of options, got {type(options).__name__}")
    # A null path or text means "none", like leaving the key out.
    options = {k: "" if v is None and _TYPES.get(k) is str else v for k, v in options.items()}
    values, problems = convert(GuidanceCfg, options, parsers=_PARSERS)
    if problems:
        raise GuidanceError(say(problems[0], GUIDANCE, KEYS), problems[0].key)
    cfg = GuidanceCfg(**values)
    _check_order(cfg)
    return cfg


def text_prompts(cfg: GuidanceCfg, prompt: str) -> tuple[Weighted, ...]:
    """The text prompts in force: `guidance.text`, or else the job's prompt."""
    return cfg.text if cfg.text else parse_weighted(prompt or "", "prompt", "text")


def active_guides(cfg: GuidanceCfg, prompt: str) -> tuple[str, ...]:
    """Names of the guides with something to do; () means plain sampling."""
    guides = []
    if cfg.text_weight != 0 and any(w.weight != 0 for w in text_prompts(cfg, prompt)):
        guides.append("text")
    if cfg.image_weight != 0 and any(w.weight != 0 for w in cfg.image_prompts):
        guides.append("image")
    if cfg.target and cfg.target_weight != 0:
        guides.append("target")
    if cfg.style and cfg.style_weight != 0:
        guides.append("style")
    # A zero step size or an empty time window also means no guidance at all.
    strength = cfg.unet_lr if cfg.through_unet else cfg.scale
    return tuple(guides) if strength > 0 else ()


CLIP_GUIDES = ("text", "image", "style")
