"""The run folder between runs: what a start must set aside or delete before it writes
(temporaries a kill left, the leftovers of a start that never completed a checkpoint,
the whole folder on --restart). Main process only."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("xurdif.train")
ARTEFACTS = ("recipe.yaml", "samples", "tb", "checkpoints", "model.safetensors", "report.html",
             "model-best.safetensors", "ema-snapshots", "heldout.txt", "eval", "README.md")
ABORTED = ".aborted-"


def is_temporary(path: Path) -> bool:
    """An atomic-write temporary (.NAME*.tmp) or a checkpoint folder not yet renamed (step-N.tmp)."""
    name = path.name
    return name.endswith(".tmp") and (name.startswith(".") or (path.parent.name == "checkpoints"
                                                                and name.startswith("step-")))


def remove_stale_temps(run_dir: Path) -> None:
    """Delete what a kill left half-written. Called before this run writes anything."""
    stale = [p for p in Path(run_dir).rglob("*.tmp") if is_temporary(p)]
    for p in sorted(stale, key=lambda p: len(p.parts)):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) an interrupted run left in %s", len(stale), run_dir)


def foreign_entries(run_dir: Path) -> list[str]:
    """Names in a run folder that no run wrote: such a folder is not set aside unasked."""
    return sorted(p.name for p in Path(run_dir).iterdir()
                  if p.name not in ARTEFACTS and not p.name.startswith(ABORTED) and not is_temporary(p))


def set_aside_aborted(run_dir: Path) -> Path | None:
    """Move what a start that never completed a checkpoint wrote (logs, grids, recipe)
    into <run>/.aborted-<time>/, so that the run can start afresh and nothing is lost."""
    entries = [p for p in Path(run_dir).iterdir() if p.name in ARTEFACTS]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir / f"{ABORTED}{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir / f"{ABORTED}{stamp}-{n}"
    aside.mkdir()
    for p in entries:
        p.rename(aside / p.name)
    return aside


def prepare_run_dir(run_dir: Path, set_aside: str | None) -> None:
    """Main process, before the run writes anything: set aside what must not be mixed
    into a fresh start, and delete temporaries a kill left."""
    if set_aside == "restart":
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        log.info("moved the previous run to %s", aside)
        return
    if run_dir.is_dir():
        remove_stale_temps(run_dir)
    if set_aside == "aborted":
        aside = set_aside_aborted(run_dir)
        log.info("no usable checkpoint in %s: starting afresh%s", run_dir,
                 f"; the earlier start's files moved to {aside}" if aside else "")
