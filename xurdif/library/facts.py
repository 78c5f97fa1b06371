"""What a model's library entry and model card say about it, each fact from the model
file's metadata and, where the model sits in one, its run folder (nothing else: a folder
of downloaded models works too)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from ..report.data import Series, list_checkpoints, list_grids
from ..weights import ModelMeta

KID, MEMORISED = "eval/kid", "eval/memorised"
RUN_FILES = ("recipe.yaml", "tb", "samples")  # any of them: the model's folder is a run folder


def render_command(model: str | Path, out: str = "out") -> str:
    """The xurdif-sample line that renders four images with the model's own sampler."""
    return shlex.join(["xurdif-sample", str(model), "--prompt", "sample", "--n", "4", "-o", out])


def run_folder(model: Path, meta: ModelMeta) -> Path | None:
    """The run folder the model file was exported into, if it sits in one (a merge saved
    into a run folder was not: its grids and logs are not the merge's)."""
    folder = Path(model).parent
    return folder if not is_merge(meta) and any((folder / name).exists() for name in RUN_FILES) else None


def last_grid(run_dir: Path | None) -> tuple[int, Path] | None:
    """The run's newest sample grid, (step, path)."""
    grids = list_grids(run_dir) if run_dir is not None else []
    return grids[-1] if grids else None


def recipe_dict(meta: ModelMeta, run_dir: Path | None = None) -> dict:
    """The recipe the weights were trained with: the model file's copy, else the run's recipe.yaml."""
    texts = [meta.recipe]
    if run_dir is not None and (run_dir / "recipe.yaml").is_file():
        texts.append((run_dir / "recipe.yaml").read_text())
    for text in texts:
        try:
            data = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            return data
    return {}


def data_source(recipe: dict) -> str:
    """Where the training images came from, as the recipe names it ("" when unknown)."""
    d = recipe.get("data") or {}
    key = {"folder": "path", "hf": "hf_dataset", "shards": "shards"}.get(d.get("source", "folder"), "path")
    return str(d.get(key) or "")


def is_merge(meta: ModelMeta) -> bool:
    return isinstance(meta.extra.get("merge"), dict)


def merge_parents(meta: ModelMeta) -> list[dict]:
    """A merge's parents as xurdif-merge records them ({file, sha256, weight}); [] for other models."""
    return [p for p in meta.extra["merge"].get("parents", []) if isinstance(p, dict)] if is_merge(meta) else []


def parents(meta: ModelMeta, recipe: dict) -> list[str]:
    """The models these weights came from: a merge's parents, or the model it was fine-tuned from."""
    if is_merge(meta):
        return [str(p.get("file", "?")) for p in merge_parents(meta)]
    init = (recipe.get("model") or {}).get("init_from") or ""
    if not init and meta.source.startswith("fine-tuned from "):
        init = meta.source[len("fine-tuned from "):]
    return [str(init)] if init else []


def images_seen(meta: ModelMeta) -> int | None:
    """The images the weights were trained on; a merge's step is its first parent's, so None."""
    return None if is_merge(meta) else meta.images_seen


def lineage(meta: ModelMeta, parents: list[str]) -> str:
    """Its parents in words: a merge's with their weights, or the model it was fine-tuned from."""
    if is_merge(meta):
        return "merge of " + ", ".join(f"{p.get('file')} ({p.get('weight', 0):g})" for p in merge_parents(meta))
    return f"fine-tuned from {parents[0]}" if parents else "trained from scratch (or not recorded)"


def latest_quality(scalars: Series) -> dict | None:
    """The latest in-training KID and memorised share, with their step; None if never measured."""
    kid = scalars.get(KID) or {}
    if not kid:
        return None
    step = max(kid)
    out = {"step": step, "kid": kid[step]}
    memorised = scalars.get(MEMORISED) or {}
    if step in memorised:
        out["memorised"] = memorised[step]
    return out


def file_quality(meta: ModelMeta) -> dict | None:
    """A model-best file's own scores (its metadata's `best`)."""
    best = meta.extra.get("best")
    return best if isinstance(best, dict) and "kid" in best else None


def training(meta: ModelMeta) -> dict:
    """What the trainer recorded at export: wall-clock seconds and images trained on (missing: {})."""
    t = meta.extra.get("training")
    return t if isinstance(t, dict) else {}


def checkpoint_seconds(run_dir: Path | None) -> float | None:
    """The training time the run's newest checkpoint records (state.json), if any."""
    for c in reversed(list_checkpoints(run_dir) if run_dir is not None else []):
        try:
            return float(json.loads((c.path / "state.json").read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
