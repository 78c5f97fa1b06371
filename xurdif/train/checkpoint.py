"""Atomic checkpoints: written into `step-NNNNNNN.tmp`, every file fsynced, a
manifest (sizes and sha256 of every file) written last, then renamed into place.
A folder without a valid manifest is never resumed from. Only safe formats are
read: safetensors for tensors, JSON for metadata, torch.load(weights_only=True)
for optimizer and grad-scaler state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import current_umask, fsync_path
from ..killpoint import kill_point
from .state import RunState

log = logging.getLogger(__name__)
NAME = re.compile(r"^step-(\d{7,})$")


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_same_shape(ours: dict, theirs: dict, path: Path) -> None:
    """A checkpoint of another network is an error that names the keys, not a torch traceback."""
    bad = sorted(set(ours) ^ set(theirs))
    bad += [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}" for k in sorted(set(ours) & set(theirs))
            if ours[k].shape != theirs[k].shape]
    if bad:
        raise ValueError(f"{path}: checkpoint is of a different model shape than the recipe's; "
                         f"mismatching keys ({len(bad)}): {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def save_checkpoint(
    run_dir: Path,
    state: dict,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    scaler: dict | None = None,
    posthoc: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint; `state` is JSON metadata holding at least `step`;
    `posthoc` holds the post-hoc EMAs (ema.posthoc_stds), when tracked."""
    final = checkpoint_dir(run_dir, state["step"])
    tmp = final.with_name(final.name + ".tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors")
        kill_point("mid-save", state["step"])
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        if posthoc:
            save_file({k: v.detach().cpu().contiguous() for k, v in posthoc.items()}, tmp / "posthoc.safetensors")
        torch.save(optimizer, tmp / "optimizer.pt")
        if scaler:
            torch.save(scaler, tmp / "scaler.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        files = {}
        mode = 0o666 & ~current_umask()
        for f in sorted(tmp.iterdir()):
            os.chmod(f, mode)  # safetensors writes 0600; the rest of a run folder follows the umask
            fsync_path(f)
            files[f.name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
        manifest = dict(state, files=files)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        fsync_path(tmp / "manifest.json")
        fsync_path(tmp)
        if final.exists():  # a stale checkpoint of the same step from an abandoned branch of the run
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(final.parent)
        kill_point("after-checkpoint-rename", state["step"])
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final}: {e.strerror or e}; earlier checkpoints are intact"
        ) from e
    return final


def validate(path: Path) -> str | None:
    """None if the checkpoint folder is complete and intact, else the reason."""
    mf = path / "manifest.json"
    if not mf.is_file():
        return "no manifest.json (incomplete write)"
    try:
        manifest = json.loads(mf.read_text())
        for name, info in manifest["files"].items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != info["size"]:
                return f"{name} has {f.stat().st_size} bytes, manifest says {info['size']}"
            if _sha256(f) != info["sha256"]:
                return f"{name} is corrupt (sha256 mismatch)"
    except (ValueError, KeyError, TypeError) as e:
        return f"manifest.json is unreadable: {e}"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)), key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint with a valid manifest; broken ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        reason = validate(path)
        if reason is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, reason)
    return None


def load_checkpoint(path: Path, verified: bool = False) -> dict:
    """Read a checkpoint; `verified` skips re-hashing one latest_checkpoint just validated."""
    path = Path(path)
    reason = None if verified else validate(path)
    if reason is not None:
        raise CheckpointError(f"{path}: not a valid checkpoint: {reason}")
    scaler = path / "scaler.pt"
    posthoc = path / "posthoc.safetensors"
    return {
        "posthoc": load_file(posthoc) if posthoc.exists() else None,
        "state": json.loads((path / "state.json").read_text()),
        **load_weights(path, "model", "ema"),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scaler": torch.load(scaler, weights_only=True) if scaler.exists() else None,
    }


def load_weights(path: Path, *names: str) -> dict[str, dict[str, torch.Tensor]]:
    """A checkpoint's weight files by name ("model", "ema"), without its optimizer state."""
    return {name: load_file(Path(path) / f"{name}.safetensors") for name in names}


def stored_recipe(path: Path) -> str | None:
    """The resolved recipe YAML a checkpoint was written with (None for older checkpoints)."""
    return RunState.from_dict(json.loads((Path(path) / "state.json").read_text())).recipe


def prune(run_dir: Path, keep_last: int, keep_every: int, also: list[Path] = ()) -> list[Path]:
    """Delete old checkpoints (main process only, and only after a successful save); `also`:
    more to keep (those a look-back may score: xurdif.train.lookback)."""
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) | set(also)
    if keep_every:
        keep |= {p for p in ckpts if int(NAME.match(p.name).group(1)) % keep_every == 0}
    removed = [p for p in ckpts if p not in keep]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed
