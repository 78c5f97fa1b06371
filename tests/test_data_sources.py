"""HF and shard sources: same images as the folder source, rank/worker splitting, refusals."""
from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xurdif.data import DataError, open_dataset
from xurdif.data.make_shards import main as make_shards_main
from xurdif.data.make_shards import write_shards
from xurdif.recipe import DataCfg

FIXTURE = Path(__file__).parent / "fixtures" / "emoji-faces-32"


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """imagefolder writes Arrow files into the datasets cache: keep them out of $HOME."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def keys(batch: torch.Tensor) -> list[bytes]:
    """One hashable key per image, exact to the byte (images compared as a multiset)."""
    return [x.numpy().tobytes() for x in batch]


def folder_keys(size: int = 32) -> Counter:
    ds = open_dataset(DataCfg(path=str(FIXTURE), size=size))
    return Counter(keys(ds.get(range(len(ds)), [0] * len(ds))))


def stream_keys(cfg: DataCfg, rank: int = 0, world_size: int = 1, epochs: int = 1, **kw) -> Counter:
    ds = open_dataset(cfg, rank, world_size)
    return Counter(k for b in ds.stream(5, seed=7, epochs=epochs, **kw) for k in keys(b))


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    """The fixture as shards twice: 11 shards of 3 (split by shard) and 2 of 16 (split by sample)."""
    root = tmp_path_factory.mktemp("shards")
    write_shards(FIXTURE, root / "small", per_shard=3, size=32)
    write_shards(FIXTURE, root / "big", per_shard=16, size=32)
    return root


def shard_cfg(spec, **kw) -> DataCfg:
    kw.setdefault("size", 32)
    kw.setdefault("shuffle_buffer", 8)
    return DataCfg(source="shards", shards=str(spec), **kw)


# ---------------------------------------------------------------- every source, same images


def test_every_source_yields_the_same_images(tmp_path, shard_dirs):
    import datasets

    want = folder_keys()
    assert sum(want.values()) == 32 and len(want) == 32  # 32 distinct images

    imagefolder = open_dataset(DataCfg(source="hf", hf_dataset=str(FIXTURE), size=32))
    assert Counter(keys(imagefolder.get(range(32), [0] * 32))) == want

    table = datasets.load_dataset("imagefolder", data_dir=str(FIXTURE), split="train")
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    saved = open_dataset(DataCfg(source="hf", hf_dataset=str(tmp_path / "saved"), size=32))
    assert len(saved) == 32 and saved.describe().endswith("[train], cached in memory: 0.1 MB")
    assert Counter(keys(saved.get(range(32), [0] * 32))) == want

    for spec in (shard_dirs / "big", shard_dirs / "small" / "index.json",
                 shard_dirs / "small" / "shard-{000000..000010}.tar"):
        assert stream_keys(shard_cfg(spec)) == want, spec


def test_hf_lazy_and_cached_agree_with_random_crops():
    c = dict(source="hf", hf_dataset=str(FIXTURE), size=24, crop="random", hflip=True)
    cached = open_dataset(DataCfg(**c))
    lazy = open_dataset(DataCfg(**c, cache_max_images=4))
    assert cached.cached and not lazy.cached and len(lazy) == 32
    idx, seeds = [3, 1, 3, 30], [5, 6, 7, 8]
    assert torch.equal(cached.get(idx, seeds), lazy.get(idx, seeds))
    assert "decoded per batch" in lazy.describe()


# ---------------------------------------------------------------- hf errors and skips


def test_hf_errors_name_the_key(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"img": [b"x"], "label": [1]}).save_to_disk(str(tmp_path / "cols"))
    cases = [
        (dict(hf_dataset=str(tmp_path / "cols")), "data.image_column: 'image' is not a column of",
         "columns: img, label"),
        (dict(hf_dataset=str(FIXTURE), hf_split="validation"), "data.hf_split: ", "validation"),
        (dict(hf_dataset=str(tmp_path / "missing" / "dir")), "data.hf_dataset: folder ", "does not exist"),
    ]
    for kw, start, part in cases:
        with pytest.raises(DataError) as err:
            open_dataset(DataCfg(source="hf", **kw))
        assert str(err.value).startswith(start) and part in str(err.value), str(err.value)


def test_hub_name_not_in_cache_fails_at_once_without_network(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t = time.perf_counter()
    with pytest.raises(DataError) as err:
        open_dataset(DataCfg(source="hf", hf_dataset="someone/not-downloaded"))
    assert time.perf_counter() - t < 2
    msg = str(err.value)
    assert msg.startswith("data.hf_dataset: 'someone/not-downloaded' is neither a folder nor in the local")
    assert "nothing is downloaded" in msg and "\n" not in msg


def test_hf_bad_rows_are_skipped_with_one_warning(tmp_path, caplog):
    import datasets

    good = [(FIXTURE / f).read_bytes() for f in sorted(p.name for p in FIXTURE.glob("*.png"))[:3]]
    table = datasets.Dataset.from_dict({"image": good[:2] + [b"garbage"] + good[2:]})
    table.save_to_disk(str(tmp_path / "rows"))
    with caplog.at_level(logging.WARNING, logger="xurdif.data"):
        ds = open_dataset(DataCfg(source="hf", hf_dataset=str(tmp_path / "rows"), size=32))
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("rows[2]")
    assert [r.getMessage() for r in caplog.records].count(f"skipping image {ds.skipped[0][0]}: "
                                                         f"{ds.skipped[0][1]}") == 1
    assert "(1 skipped)" in ds.describe()


# ---------------------------------------------------------------- shards: splitting and order


@pytest.mark.parametrize("layout", ["small", "big"])
def test_two_ranks_two_workers_see_every_sample_once_per_epoch(shard_dirs, layout):
    want = folder_keys()
    cfg = shard_cfg(shard_dirs / layout, num_workers=2)
    per_rank = [stream_keys(cfg, rank, 2, epochs=1) for rank in (0, 1)]
    assert per_rank[0] + per_rank[1] == want                   # every image exactly once in the epoch
    assert abs(sum(per_rank[0].values()) - sum(per_rank[1].values())) <= 6
    # Epoch 2 deals the shards anew, and again every image comes exactly once.
    two = [stream_keys(cfg, rank, 2, epochs=2) for rank in (0, 1)]
    assert two[0] + two[1] == Counter({k: 2 for k in want})


def test_shuffle_is_seeded_and_resume_continues_the_same_stream(shard_dirs):
    ds = open_dataset(shard_cfg(shard_dirs / "small", num_workers=2, crop="random", hflip=True, size=24))
    full = list(ds.stream(4, seed=3, epochs=2))
    again = list(ds.stream(4, seed=3, epochs=2))
    other = list(ds.stream(4, seed=4, epochs=2))
    assert len(full) == len(again) and all(torch.equal(a, b) for a, b in zip(full, again))
    assert not torch.equal(torch.cat(full), torch.cat(other))
    for done in (1, 3, 6, 11):  # batches the interrupted run had consumed
        resumed = list(ds.stream(4, seed=3, skip_images=4 * done, epochs=2))
        assert len(resumed) == len(full) - done
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[done:])), done
    # Rank 1 of 2: skip_images counts what this rank's stream delivered (trainer: images_seen // world).
    rank1 = open_dataset(shard_cfg(shard_dirs / "small", num_workers=2, size=24), 1, 2)
    full1 = list(rank1.stream(4, seed=3, epochs=2))
    resumed1 = list(rank1.stream(4, seed=3, skip_images=4 * 3, epochs=2))
    assert len(resumed1) == len(full1) - 3 and all(torch.equal(a, b) for a, b in zip(resumed1, full1[3:]))


def test_shuffle_buffer_mixes_shards(shard_dirs):
    ordered = open_dataset(shard_cfg(shard_dirs / "big", shuffle_buffer=0))
    mixed = open_dataset(shard_cfg(shard_dirs / "big", shuffle_buffer=32))
    a = [k for b in ordered.stream(32, seed=1, epochs=1) for k in keys(b)]
    b = [k for b in mixed.stream(32, seed=1, epochs=1) for k in keys(b)]
    assert sorted(a) == sorted(b) and a != b
    # shuffle_buffer 0 keeps tar order inside a shard: the first 16 come from one shard.
    shard_sets = [set(a[:16]), set(a[16:])]
    assert sum(len(set(b[:16]) & s) < 16 for s in shard_sets) == 2


# ---------------------------------------------------------------- shards: refusals and bad members


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_pipe_urls_are_refused_unless_allowed(tmp_path):
    tar = make_tar(tmp_path / "a.tar", [(f"{i}.png", png_bytes(i * 40)) for i in range(3)])
    with pytest.raises(DataError) as err:
        open_dataset(shard_cfg(f"pipe:cat {tar}", size=8))
    assert str(err.value).startswith("data.shards: 'pipe:cat ") and "data.allow_pipe: true" in str(err.value)
    allowed = open_dataset(shard_cfg(f"pipe:cat {tar}", size=8, allow_pipe=True))
    assert sum(b.shape[0] for b in allowed.stream(2, epochs=1)) == 3
    with pytest.raises(DataError, match="only local files"):
        open_dataset(shard_cfg("https://example.com/s-{0..3}.tar"))


def test_pickled_members_are_refused_unless_allowed(tmp_path):
    tar = make_tar(tmp_path / "p.tar", [("0.png", png_bytes(0)), ("0.pyd", b"\x80\x04K\x01."),
                                         ("1.png", png_bytes(90))])
    with pytest.raises(DataError) as err:
        open_dataset(shard_cfg(tar, size=8))
    assert "0.pyd is pickled data" in str(err.value) and "data.allow_pickle: true" in str(err.value)
    ds = open_dataset(shard_cfg(tar, size=8, allow_pickle=True))
    assert sum(b.shape[0] for b in ds.stream(4, epochs=1)) == 2


def test_corrupt_member_is_skipped_with_one_warning(tmp_path, caplog):
    tar = make_tar(tmp_path / "c.tar", [("0.png", png_bytes(0)), ("1.png", b"not a png"),
                                         ("2.png", png_bytes(200)), ("3.png", png_bytes(100)[:40])])
    ds = open_dataset(shard_cfg(tar, size=8))
    with caplog.at_level(logging.WARNING, logger="xurdif.data"):
        got = torch.cat(list(ds.stream(8, epochs=1)))
    assert got.shape == (2, 3, 8, 8)
    assert sorted(((got[:, 0, 0, 0] + 1) * 127.5).round().tolist()) == [0, 200]
    assert sorted(w for w, _ in ds.skipped) == [f"{tar}:1", f"{tar}:3"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("skipping shard member" in w for w in warned)


def test_missing_shards_are_named(tmp_path):
    make_tar(tmp_path / "s-0.tar", [("0.png", png_bytes(0))])
    with pytest.raises(DataError, match=r"^data\.shards: shard .*s-1\.tar does not exist$"):
        open_dataset(shard_cfg(tmp_path / "s-{0..1}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar files and no index.json in folder"):
        open_dataset(shard_cfg(tmp_path / "empty"))


# ---------------------------------------------------------------- make_shards tool


def test_make_shards_cli_writes_index_and_verifies(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(FIXTURE.glob("*.png"))[:7]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "LICENSE.md").write_text("licence")
    (src / "broken.png").write_bytes(b"junk")
    rc = make_shards_main([str(src), str(tmp_path / "out"), "--per-shard", "3", "--size", "16", "--verify"])
    out = capsys.readouterr().out
    assert rc == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 1] and index["total"] == 7 and index["size"] == 16
    assert [s["reason"] for s in index["skipped"]] and index["skipped"][0]["file"].endswith("broken.png")
    assert "7 images in 3 shards" in out and "verify: all shards match the index" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    ds = open_dataset(shard_cfg(tmp_path / "out", size=16))
    assert ds.describe().startswith("7 images in 3 shards from ")
    # Same bytes in, same bytes out: shards are reproducible.
    make_shards_main([str(src), str(tmp_path / "again"), "--per-shard", "3", "--size", "16"])
    assert (tmp_path / "out" / "shard-000001.tar").read_bytes() == (tmp_path / "again" / "shard-000001.tar").read_bytes()
    assert make_shards_main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "FOLDER: folder" in capsys.readouterr().err


def test_a_pickled_member_anywhere_is_refused_at_open_and_by_dry_run(tmp_path, capsys):
    from xurdif.train.cli import main as launch_main

    make_tar(tmp_path / "s-0.tar", [(f"{i}.png", png_bytes(i * 40)) for i in range(3)])
    make_tar(tmp_path / "s-1.tar", [("3.png", png_bytes(10)), ("4.png", png_bytes(20)),
                                     ("4.pyd", b"\x80\x04K\x01.")])
    spec = tmp_path / "s-{0..1}.tar"
    with pytest.raises(DataError) as err:
        open_dataset(shard_cfg(spec, size=8))
    assert str(err.value).startswith(f"data.shards: {tmp_path / 's-1.tar'} member 4.pyd is pickled data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: p\ndata: {{source: shards, shards: '{spec}', size: 8}}\n"
                      f"model: {{preset: tiny}}\ntrain: {{images: 100, output_dir: '{tmp_path / 'runs'}'}}\n")
    assert launch_main([str(recipe), "--dry-run"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "4.pyd is pickled data" in err_lines[0]
    assert not (tmp_path / "runs").exists()
    # Allowed: every image trains, the pickle is never read, and nothing is warned about.
    ds = open_dataset(shard_cfg(spec, size=8, allow_pickle=True))
    assert sum(b.shape[0] for b in ds.stream(2, epochs=1)) == 5 and ds.skipped == []


def test_bad_members_and_shards_are_warned_once_by_name_and_counted(tmp_path, caplog):
    make_tar(tmp_path / "s-0.tar", [("0.png", png_bytes(0)), ("1.png", b"not a png"),
                                     ("2.png", png_bytes(200)), ("3.txt", b"caption only")])
    make_tar(tmp_path / "s-1.tar", [("4.png", png_bytes(100)), ("5.png", png_bytes(50))])
    (tmp_path / "s-2.tar").write_bytes(b"this is not a tar file at all" * 40)
    with caplog.at_level(logging.WARNING, logger="xurdif.data"):
        ds = open_dataset(shard_cfg(tmp_path / "s-{0..2}.tar", size=8, num_workers=2, shuffle_buffer=2))
        got = sum(b.shape[0] for b in ds.stream(2, seed=1, epochs=6))
    assert got == 6 * 4
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    s0, s2 = tmp_path / "s-0.tar", tmp_path / "s-2.tar"
    assert sorted(warned) == sorted([
        f"skipping shard member {s0}:1: not an image PIL can identify",
        f"skipping shard member {s0}:3: no image member (has txt)",
        f"skipping shard {s2}: not a tar archive, or damaged before its first member"])
    assert len(warned) == 3 and not any("BytesIO" in w or "None" in w for w in warned)
    assert ds.describe().startswith("5 images in 2 shards from ") and "(3 skipped)" in ds.describe()
