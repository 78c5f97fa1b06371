"""The models under a folder, one Entry each, gathered from their files and run folders."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.images import find_image_files
from ..report.data import read_scalars
from ..weights import ModelFileError, ModelMeta, read_meta
from . import facts


@dataclass
class Entry:
    path: Path  # the model file
    name: str  # its path under the library folder
    meta: ModelMeta
    run_dir: Path | None  # the run folder it was exported into, if any
    grid: tuple[int, Path] | None = None  # the run's last sample grid (step, path)
    data: str = ""  # the recipe's data folder (or dataset, or shards)
    images: int | None = None  # training images
    seconds: float | None = None  # training wall clock
    preset: str = ""
    quality: dict | None = None  # kid, memorised, step
    quality_from: str = ""
    parents: list[str] = field(default_factory=list)
    command: str = ""


def image_count(meta: ModelMeta, data: str, recipe: dict) -> int | None:
    """Images trained on, as the export recorded it; else those in the data folder if it is here."""
    recorded = facts.training(meta).get("images")
    if recorded is not None:
        return int(recorded)
    if (recipe.get("data") or {}).get("source", "folder") == "folder" and data and Path(data).is_dir():
        return len(find_image_files(Path(data)))
    return None


def quality(path: Path, meta: ModelMeta, run_dir: Path | None, scalars: dict) -> tuple[dict | None, str]:
    """(scores, where they come from): the file's own (model-best), else its run's latest in-training ones."""
    own = facts.file_quality(meta)
    if own is not None:
        return own, "recorded in the model file (model-best)"
    if run_dir is None or path.name != "model.safetensors":
        return None, ""
    if run_dir not in scalars:
        scalars[run_dir] = read_scalars(run_dir / "tb") if (run_dir / "tb").is_dir() else {}
    q = facts.latest_quality(scalars[run_dir])
    return q, ("the run's TensorBoard log (in training)" if q else "")


def entry(path: Path, root: Path, meta: ModelMeta, scalars: dict) -> Entry:
    run_dir = facts.run_folder(path, meta)
    recipe = facts.recipe_dict(meta, run_dir)
    data = facts.data_source(recipe)
    seconds = facts.training(meta).get("seconds")
    q, where = quality(path, meta, run_dir, scalars)
    return Entry(
        path=path, name=path.relative_to(root).as_posix(), meta=meta, run_dir=run_dir,
        grid=facts.last_grid(run_dir), data=data, images=image_count(meta, data, recipe),
        seconds=float(seconds) if seconds is not None else facts.checkpoint_seconds(run_dir),
        preset=str((recipe.get("model") or {}).get("preset") or ""), quality=q, quality_from=where,
        parents=facts.parents(meta, recipe), command=facts.render_command(path))


def scan(folder: str | Path) -> tuple[list[Entry], list[str]]:
    """Every model file under the folder, recursively, and one line per .safetensors that is
    not one (a checkpoint's tensors, a foreign or damaged file), which is skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    entries, skipped, scalars = [], [], {}
    for p in sorted(root.rglob("*.safetensors")):
        try:
            meta = read_meta(p)
        except ModelFileError as e:
            skipped.append(f"skipped {p}: {str(e).removeprefix(f'{p}: ').split(';')[0]}")
            continue
        entries.append(entry(p, root, meta, scalars))
    return entries, skipped
