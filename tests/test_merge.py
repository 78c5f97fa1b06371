"""Model interpolation (xurdif/merge.py, tools/merge.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xurdif.merge import main as merge_main
from xurdif.models.unet import UNet, unet_config
from xurdif.weights import model_sha256
from xurdif.weights import ModelMeta, load_network, load_state, read_meta, save_model_file

ROOT = Path(__file__).resolve().parent.parent
CFG = unet_config("tiny", base_width=8, mults=[1, 2], norm_groups=4, head_dim=8)


def write_model(path: Path, seed: int, meta: ModelMeta | None = None, cfg: dict = CFG, ema: bool = True) -> Path:
    torch.manual_seed(seed)
    net = UNet(**cfg)
    for p in net.parameters():  # nothing left at zero: every tensor differs between models
        torch.nn.init.normal_(p, std=0.1)
    meta = meta or ModelMeta(architecture="xurdif_unet", net_config=cfg, image_size=(16, 16), source="test")
    state = net.state_dict()
    save_model_file(path, meta, state, {k: v * 0.5 for k, v in state.items()} if ema else None)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def ab(tmp_path):
    return write_model(tmp_path / "a.safetensors", 1), write_model(tmp_path / "b.safetensors", 2)


def tensors(path: Path, which: str) -> dict[str, torch.Tensor]:
    return load_state(path, which)


@pytest.mark.parametrize("which", ["ema", "model"])
def test_weight_0_and_1_are_exactly_a_and_b_and_half_is_the_mean(ab, tmp_path, which):
    a, b = ab
    for w, want in ((0.0, a), (1.0, b)):
        out = tmp_path / f"w{w}.safetensors"
        assert merge_main([str(a), str(b), "--weight", str(w), "-o", str(out)]) == 0
        got, ref = tensors(out, which), tensors(want, which)
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    out = tmp_path / "half.safetensors"
    assert merge_main([str(a), str(b), "--weight", "0.5", "-o", str(out)]) == 0
    got, ta, tb = tensors(out, which), tensors(a, which), tensors(b, which)
    assert len(got) == len(ta) > 10
    for k in ta:
        assert torch.equal(got[k], ((ta[k].double() + tb[k].double()) / 2).to(ta[k].dtype)), k
        assert not torch.equal(got[k], ta[k])  # a real mix, not a copy


def test_three_models_metadata_and_one_weight_set(tmp_path, ab):
    a, b = ab
    c = write_model(tmp_path / "c.safetensors", 3)
    out = tmp_path / "abc.safetensors"
    rc = subprocess.run([sys.executable, str(ROOT / "tools" / "merge.py"), str(a), str(b), str(c),
                         "--weight", "0.5", "0.3", "0.2", "--use", "ema", "-o", str(out)],
                        capture_output=True, text=True, env={"XDG_CACHE_HOME": str(tmp_path / "cache"),
                                                             "PATH": "/usr/bin:/bin"})
    assert rc.returncode == 0, rc.stderr
    meta = read_meta(out)
    assert meta.extra["merge"] == {"weights": "ema", "parents": [
        {"file": "a.safetensors", "sha256": model_sha256(a), "weight": 0.5},
        {"file": "b.safetensors", "sha256": model_sha256(b), "weight": 0.3},
        {"file": "c.safetensors", "sha256": model_sha256(c), "weight": 0.2}]}
    assert meta.net_config == CFG and meta.prediction == read_meta(a).prediction
    k = "out.weight"
    want = sum(w * load_state(p, "ema")[k].double() for p, w in ((a, 0.5), (b, 0.3), (c, 0.2))).float()
    assert torch.equal(load_state(out, "model")[k], want)
    net, _ = load_network(out)  # a normal model file
    assert isinstance(net, UNet)


def _meta(**changes) -> ModelMeta:
    base = ModelMeta(architecture="xurdif_unet", net_config=CFG, image_size=(16, 16), source="test")
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("changes,cfg,line", [
    ({"architecture": "unet1"}, CFG,
     "b.safetensors: architecture is 'unet1', {a}'s is 'xurdif_unet': only models of the same architecture can be merged"),
    ({}, {**CFG, "base_width": 16},
     "b.safetensors: network config base_width is 16, {a}'s is 8: only models of the same network config can be merged"),
    ({"prediction": "x0"}, CFG,
     "b.safetensors: prediction type is 'x0', {a}'s is 'eps': only models of the same prediction type can be merged"),
    ({"schedule": "linear"}, CFG,
     "b.safetensors: schedule is 'linear', {a}'s is 'cosine': only models of the same schedule can be merged"),
    ({"timesteps": 500}, CFG,
     "b.safetensors: schedule length (timesteps) is 500, {a}'s is 1000: only models of the same schedule length "
     "(timesteps) can be merged"),
    ({"value_range": (-0.5, 0.5)}, CFG,
     "b.safetensors: value range is [-0.5, 0.5], {a}'s is [-1.0, 1.0]: only models of the same value range can be merged"),
])
def test_every_mismatch_is_refused_with_one_line(tmp_path, capsys, changes, cfg, line):
    a = write_model(tmp_path / "a.safetensors", 1)
    b = write_model(tmp_path / "b.safetensors", 2, _meta(net_config=cfg, **changes), cfg)
    out = tmp_path / "c.safetensors"
    assert merge_main([str(a), str(b), "--weight", "0.3", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {str(tmp_path)}/{line.format(a=a)}\n"
    assert not out.exists()


@pytest.mark.parametrize("weights,msg", [
    (["0.5", "0.6"], "error: --weight: the weights sum to 1.1; they must sum to 1\n"),
    (["0.2", "0.3", "0.5"], "error: --weight: 3 weights for 2 models; give one per model (or, with two models, "
                            "one: B's share)\n"),
])
def test_bad_weights_are_one_line(ab, tmp_path, capsys, weights, msg):
    a, b = ab
    assert merge_main([str(a), str(b), "--weight", *weights, "-o", str(tmp_path / "c.safetensors")]) == 2
    assert capsys.readouterr().err == msg
