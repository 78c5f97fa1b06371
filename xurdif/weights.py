"""The model file: one .safetensors with model and EMA weights plus everything
sampling needs (architecture, network config, schedule, prediction type, value
range, image size, the recipe) in its string metadata.

Tensors are stored as `ema.<param>` and `model.<param>`. load_denoiser is the one
way to load a model for sampling (render, studio, evaluate).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .atomic import atomic_write
from .diffusion.denoiser import Denoiser
from .diffusion.schedule import make_schedule
from .models import build_network

FORMAT = "xurdif-model-1"
WEIGHTS = ("ema", "model")


# extra keys about a file's own weights (scores, training, lineage): a model made from it
# (a merge, a fine-tune) does not inherit them.
OWN_FACTS = ("best", "training", "merge", "posthoc_ema")


def inherited_extra(extra: dict) -> dict:
    return {k: v for k, v in extra.items() if k not in OWN_FACTS}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line naming the file."""


def _not_a_model_file(path: str | Path) -> ModelFileError:
    return ModelFileError(f"{path}: not a valid model file (truncated or not safetensors)")


@contextmanager
def _open_model_file(path: str | Path) -> Iterator:
    """safe_open, with a damaged or foreign file reported as ModelFileError.

    safetensors checks the header and that the data it describes lies inside the file, so
    a truncated file fails here rather than as garbage weights.
    """
    if not Path(path).is_file():
        raise ModelFileError(f"{path}: model file not found (give a run folder or a .safetensors file)")
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        raise _not_a_model_file(path) from None
    with handle as f:
        yield f


@dataclass
class ModelMeta:
    architecture: str
    net_config: dict
    schedule: str = "cosine"
    timesteps: int = 1000
    prediction: str = "eps"
    value_range: tuple[float, float] = (-1.0, 1.0)
    image_size: tuple[int, int] = (64, 64)
    recipe: str = ""  # resolved recipe YAML, "" for imported models
    source: str = ""  # free text: where the weights came from
    extra: dict = field(default_factory=dict)
    # Training position of the weights (a trained run's export), None for imported models:
    # a run compares it with its newest checkpoint to know the export is current.
    step: int | None = None
    images_seen: int | None = None
    # The model's own sampler (xurdif/sampling/defaults.py); None: the old default, ddim 50.
    sampling: dict | None = None

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "net_config": json.dumps(self.net_config, sort_keys=True),
            "schedule": self.schedule,
            "timesteps": str(self.timesteps),
            "prediction": self.prediction,
            "value_range": json.dumps(list(self.value_range)),
            "image_size": json.dumps(list(self.image_size)),
            "recipe": self.recipe,
            "source": self.source,
            "extra": json.dumps(self.extra, sort_keys=True),
            **{k: str(v) for k, v in (("step", self.step), ("images_seen", self.images_seen)) if v is not None},
            **({"sampling": json.dumps(self.sampling, sort_keys=True)} if self.sampling is not None else {}),
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str], path: str | Path = "") -> "ModelMeta":
        if md.get("format") != FORMAT:
            raise ModelFileError(
                f"{path}: not an xurdif model file (metadata 'format' is {md.get('format')!r}, "
                f"expected {FORMAT!r}); import legacy checkpoints with tools/import_urdiffusion.py"
            )
        try:
            return cls(
                architecture=md["architecture"],
                net_config=json.loads(md["net_config"]),
                schedule=md.get("schedule", "cosine"),
                timesteps=int(md.get("timesteps", 1000)),
                prediction=md.get("prediction", "eps"),
                value_range=tuple(json.loads(md.get("value_range", "[-1, 1]"))),
                image_size=tuple(json.loads(md.get("image_size", "[64, 64]"))),
                recipe=md.get("recipe", ""),
                source=md.get("source", ""),
                extra=json.loads(md.get("extra", "{}")),
                step=int(md["step"]) if "step" in md else None,
                images_seen=int(md["images_seen"]) if "images_seen" in md else None,
                sampling=json.loads(md["sampling"]) if "sampling" in md else None,
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{path}: damaged model metadata ({type(e).__name__}: {e})") from None

    def check(self, path: str | Path = "") -> "ModelMeta":
        """Refuse metadata sampling cannot use, naming the file, before any network is built."""
        from .diffusion.prediction import PREDICTIONS
        from .diffusion.schedule import SCHEDULES

        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction {self.prediction!r} (valid: {', '.join(PREDICTIONS)})")
        if not self.timesteps >= 1:
            problems.append(f"timesteps {self.timesteps} (must be >= 1)")
        lo_hi = self.value_range
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi) or not lo_hi[0] < lo_hi[1]:
            problems.append(f"value_range {list(lo_hi)} (must be [low, high] with low < high)")
        if len(self.image_size) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.image_size):
            problems.append(f"image_size {list(self.image_size)} (must be [height, width], positive)")
        if not isinstance(self.net_config, dict):
            problems.append("net_config (must be a JSON object)")
        try:
            self.default_sampling()
        except ValueError as e:
            problems.append(f"sampling ({e})")
        if problems:
            raise ModelFileError(f"{path}: unusable model metadata: {'; '.join(problems)}")
        return self


    def default_sampling(self):
        """The settings a job without a sampler renders with (ValueError if recorded badly)."""
        from .sampling.defaults import LEGACY, Sampling

        return LEGACY if self.sampling is None else Sampling.from_json(self.sampling)


def save_model_file(path: str | Path, meta: ModelMeta, model_state: dict, ema_state: dict | None) -> None:
    """Write atomically: a crash never leaves a half-written model file behind."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()})
    with atomic_write(path) as f:
        f.write(safetensors_bytes(tensors, metadata=meta.to_metadata()))


def write_sampling(path: str | Path, sampling, evidence: dict | None = None) -> None:
    """Record a model's default sampler (and how it was chosen) in its file, rewritten
    atomically with the same weights."""
    meta = read_meta(path)
    with _open_model_file(path) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.sampling = {**sampling.check().to_json(), **(evidence or {})}
    with atomic_write(path) as f:
        f.write(safetensors_bytes(tensors, metadata=meta.to_metadata()))


def read_meta(path: str | Path) -> ModelMeta:
    with _open_model_file(path) as f:
        return ModelMeta.from_metadata(f.metadata() or {}, path).check(path)


def load_state(path: str | Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """One set of weights; falls back to `model` when a file has no EMA."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    with _open_model_file(path) as f:
        keys = list(f.keys())
        prefix = weights + "."
        if not any(k.startswith(prefix) for k in keys):
            prefix = "model."
        try:
            return {k[len(prefix):]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise _not_a_model_file(path) from None


def load_network(path: str | Path, weights: str = "ema") -> tuple[torch.nn.Module, ModelMeta]:
    """Build the network named in the file's metadata and load it strictly."""
    path = Path(path)
    meta = read_meta(path)
    try:
        net = build_network(meta.architecture, meta.net_config)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: metadata describes no network this version can build "
                             f"({meta.architecture} {meta.net_config}: {e})") from None
    try:
        missing, unexpected = net.load_state_dict(load_state(path, weights), strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ModelFileError(f"{path}: weights do not match architecture {meta.architecture}: "
                             f"{str(e).strip().splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match architecture {meta.architecture}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return net.eval(), meta


def resolve_model_path(path: str | Path) -> Path:
    """A run folder (uses <run>/model.safetensors) or a .safetensors file."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found (give a run folder or a .safetensors file)")
    return p


def load_denoiser(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[Denoiser, ModelMeta]:
    """Network, schedule, prediction type and value range all from the file's metadata."""
    net, meta = load_network(resolve_model_path(path), weights)
    # channels_last: ~15 % faster convolutions on CPU (measured, bench/sample_speed.py).
    net = net.to(device, memory_format=torch.channels_last)
    den = Denoiser(net, make_schedule(meta.schedule, meta.timesteps), meta.prediction,
                   tuple(meta.value_range))
    return den, meta


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xurdif" / "model-sha256.json"


def model_sha256(path: str | Path) -> str:
    """sha256 of a model file, cached by (path, size, mtime) across runs."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # the cache is an optimisation: a read-only home must not stop a render
        cache[key] = digest
        with atomic_write(cache_path, "w") as f:
            json.dump(cache, f)
    except OSError:
        pass
    return digest
