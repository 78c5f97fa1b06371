"""Checkpoint files: atomic writes, validation, retention, write failures."""
import errno
import json
import logging

import pytest
import torch

from xurdif.train import checkpoint as C


def _save(run, step, fill=1.0):
    state = {"step": step, "images_seen": step * 8, "global_batch": 8, "world_size": 1, "recipe_hash": "x"}
    model = {"w": torch.full((3, 3), fill)}
    opt = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return C.save_checkpoint(run, state, model, {"w": torch.full((3, 3), fill / 2)}, opt)


def test_save_writes_manifest_last_and_loads_back(tmp_path):
    path = _save(tmp_path, 10)
    assert path.name == "step-0000010" and not list(path.parent.glob("*.tmp"))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"].values())
    ck = C.load_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.full((3, 3), 1.0))
    assert torch.equal(ck["ema"]["w"], torch.full((3, 3), 0.5))
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.1 and ck["state"]["images_seen"] == 80


def test_partial_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    _save(tmp_path, 10)
    partial = _save(tmp_path, 20)
    (partial / "manifest.json").unlink()  # as if killed before the manifest was written
    corrupt = _save(tmp_path, 30)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    (tmp_path / "checkpoints" / "step-0000040.tmp").mkdir()  # an interrupted write
    with caplog.at_level(logging.WARNING):
        assert C.latest_checkpoint(tmp_path).name == "step-0000010"
    text = caplog.text
    assert "step-0000030: model.safetensors is corrupt (sha256 mismatch)" in text
    assert "step-0000020: no manifest.json (incomplete write)" in text
    with pytest.raises(C.CheckpointError, match="not a valid checkpoint: no manifest.json"):
        C.load_checkpoint(partial)


def test_retention_keeps_last_k_and_milestones(tmp_path):
    for step in range(10, 110, 10):
        _save(tmp_path, step)
    removed = C.prune(tmp_path, keep_last=2, keep_every=40)
    left = [p.name for p in C.list_checkpoints(tmp_path)]
    assert left == ["step-0000040", "step-0000080", "step-0000090", "step-0000100"]
    assert len(removed) == 6


def test_write_failure_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    good = _save(tmp_path, 10)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "save_file", disk_full)
    with pytest.raises(C.CheckpointError) as e:
        _save(tmp_path, 20)
    assert str(e.value) == (f"could not write checkpoint {tmp_path}/checkpoints/step-0000020: "
                            "No space left on device; earlier checkpoints are intact")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000010"]
    assert C.validate(good) is None


def test_only_safe_formats_are_read(tmp_path):
    path = _save(tmp_path, 10)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "optimizer.pt")
    # Re-sign the manifest so that only the pickle itself is the problem.
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = {"size": (path / "optimizer.pt").stat().st_size,
                                         "sha256": C._sha256(path / "optimizer.pt")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        C.load_checkpoint(path)


def test_checkpoint_files_follow_the_umask_like_every_other_output(tmp_path):
    """safetensors' save_file writes 0600; under umask 022 every file of a run folder is 0644."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = _save(tmp_path / "run", 10)
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
