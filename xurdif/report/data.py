"""What a report shows, gathered from a run folder: the scalars of its TensorBoard
event files, the sample grids, the resolved recipe, the checkpoints and the export."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..lock import held_elsewhere

GRID_RE = re.compile(r"step-(\d+)\.png")
CKPT_RE = re.compile(r"step-(\d+)")

Series = dict[str, dict[int, float]]  # tag -> step -> value


@dataclass
class Checkpoint:
    step: int
    path: Path
    size: int  # bytes, all files of the folder


@dataclass
class RunData:
    name: str
    run_dir: Path
    scalars: Series = field(default_factory=dict)
    grids: list[tuple[int, Path]] = field(default_factory=list)
    recipe: str = ""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    model: Path | None = None  # model.safetensors, if exported
    model_step: int | None = None
    best: dict | None = None  # model-best.safetensors' step and scores, if kept
    closest: dict[str, Path] = field(default_factory=dict)  # "best"/"last": samples beside their nearest images
    live: bool = False  # still training: the page reloads itself


_TRAINING: set[Path] = set()  # run folders this process trains now


def training(run_dir: str | Path, on: bool) -> None:
    """Mark a run folder as training in this process (its reports reload themselves), or
    as ended (the report written next is the final one)."""
    (_TRAINING.add if on else _TRAINING.discard)(Path(run_dir).absolute())


def is_live(run_dir: Path) -> bool:
    """Training now: in this process, or in another that holds the run's lock."""
    return Path(run_dir).absolute() in _TRAINING or held_elsewhere(run_dir)


def merge_event(series: Series, tag: str, step: int, value: float) -> None:
    """A resumed run logs again the steps after its checkpoint: the last write wins."""
    series.setdefault(tag, {})[int(step)] = float(value)


def read_scalars(tb_dir: Path) -> Series:
    """Every scalar of every event file under tb_dir, files in the order they were written."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    series: Series = {}
    files = sorted(Path(tb_dir).glob("**/events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    for f in files:
        try:
            for ev in LegacyEventFileLoader(str(f)).Load():
                for v in ev.summary.value:
                    if v.HasField("simple_value"):
                        merge_event(series, v.tag, ev.step, v.simple_value)
        except Exception:  # a file torn by a kill: keep what was read before the tear
            continue
    return series


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_grids(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in (run_dir / "samples").glob("step-*.png"):
        m = GRID_RE.fullmatch(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    root = run_dir / "checkpoints"
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = CKPT_RE.fullmatch(p.name)
            if p.is_dir() and m:
                out.append(Checkpoint(int(m.group(1)), p, folder_size(p)))
    return sorted(out, key=lambda c: c.step)


def gather(run_dir: str | Path, scalars: Series | None = None) -> RunData:
    """A run folder's report data; `scalars` given (the trainer's own record) skips
    reading the event files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    if scalars is None and not (run_dir / "recipe.yaml").is_file() and not (run_dir / "tb").is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no recipe.yaml and no tb/)")
    recipe = run_dir / "recipe.yaml"
    model = run_dir / "model.safetensors"
    data = RunData(
        name=run_dir.resolve().name,
        run_dir=run_dir,
        scalars=scalars if scalars is not None else read_scalars(run_dir / "tb"),
        grids=list_grids(run_dir),
        recipe=recipe.read_text() if recipe.is_file() else "",
        checkpoints=list_checkpoints(run_dir),
        model=model if model.is_file() else None,
        live=is_live(run_dir),
    )
    from ..weights import read_meta

    if data.model is not None:
        try:
            data.model_step = read_meta(model).step
        except Exception:  # mid-export or foreign: shown without its step
            data.model_step = None
    if (run_dir / "model-best.safetensors").is_file():
        try:
            data.best = read_meta(run_dir / "model-best.safetensors").extra.get("best")
        except Exception:  # mid-export: the next report shows it
            data.best = None
    data.closest = {which: p for which in ("best", "last")
                    if (p := run_dir / "eval" / f"closest-{which}.png").is_file()}
    return data
