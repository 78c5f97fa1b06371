"""The trainer reads every data source: folder, hf and webdataset shards."""
import logging
from pathlib import Path

import pytest
import torch

from xurdif.data.make_shards import main as make_shards_main
from xurdif.train.cli import main as launch_main
from xurdif.weights import load_state

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")
FIXTURE = ROOT / "tests" / "fixtures" / "emoji-faces-32"
FAST = ["data.size=16", "samples.n=1", "samples.steps=1", "log.tensorboard=false", "train.steps=4",
        "checkpoint.every_steps=2"]


@pytest.fixture
def hf_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def train(out, *overrides):
    assert launch_main([RECIPE, f"train.output_dir={out}", *FAST, *overrides]) == 0
    return load_state(out / "model.safetensors", "model")


def test_hf_imagefolder_trains_like_the_folder(tmp_path, hf_cache_in_tmp, monkeypatch):
    import datasets

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    folder = train(tmp_path / "folder")
    assert calls == []  # the folder source does not go through datasets
    hf = train(tmp_path / "hf", "data.source=hf", f"data.hf_dataset={FIXTURE}")
    # The hf source really went through `datasets`...
    assert calls and calls[0][0] == "imagefolder"
    # ...and read the same images in the same order with the same draws: the same weights.
    assert all(torch.equal(folder[k], hf[k]) for k in folder)


def test_shards_train_and_resume(tmp_path, caplog):
    shards = tmp_path / "shards"
    assert make_shards_main([str(FIXTURE), str(shards), "--per-shard", "8", "--size", "16"]) == 0
    common = ["data.source=shards", f"data.shards={shards}", "data.shuffle_buffer=8"]
    whole = train(tmp_path / "whole", *common)
    # Stop after step 2, resume to step 4: the stream continues where it was.
    train(tmp_path / "split", *common, "train.steps=2")
    with caplog.at_level(logging.INFO, logger="xurdif.train"):
        resumed = train(tmp_path / "split", *common)
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert all(torch.isfinite(v).all() for v in whole.values())
