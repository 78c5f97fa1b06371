"""Batch rendering: job parsing, output safety, metadata, resume and kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xurdif.guidance import KEYS as GUIDANCE_KEYS
from xurdif.guidance import GuidanceCfg
from xurdif.models.unet import UNet, unet_config
from xurdif.render import outputs
from xurdif.render.cli import main
from xurdif.render.job_files import load_jobs, parse_prompts_text
from xurdif.render.jobs import Job, JobError, render_seed
from xurdif.render.run import render
from xurdif.weights import ModelMeta, save_model_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = unet_config("tiny", base_width=8, mults=[1, 2], norm_groups=4, head_dim=8)
    net = UNet(**cfg)
    # The output layer starts at zero; random weights make images differ by seed.
    torch.nn.init.normal_(net.out.weight, std=0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    meta = ModelMeta(architecture="xurdif_unet", net_config=cfg, image_size=(16, 16), source="test")
    state = net.state_dict()
    save_model_file(path, meta, state, {k: v + 0.01 for k, v in state.items()})
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def images(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): pixels(p) for p in sorted(out.glob("[0-9]*/*.png"))}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# --- job parsing -------------------------------------------------------------

def test_prompts_file_parsing():
    text = """# my prompts
a red fox | seed=7 n=3 steps=30 strength=0.5 size=96x64

  two words   # trailing comment
bad line | sed=3
a face | post=crisp,gamma:0.9 sampler=dpmpp_2m
"""
    jobs, errors = parse_prompts_text(text, "p.txt", Job())
    assert [j.prompt for j in jobs] == ["a red fox", "two words", "a face"]
    fox = jobs[0]
    assert (fox.seed, fox.n, fox.steps, fox.strength, fox.size) == (7, 3, 30, 0.5, (96, 64))
    assert fox.seeds() == [7, 8, 9] and fox.line == 2
    # The malformed line keeps its index, so later prompts are not renumbered.
    assert [j.index for j in jobs] == [0, 1, 3]
    assert errors == ["p.txt:5: unknown option 'sed'; did you mean 'seed'? valid: prompt, n, seed, "
                      "steps, sampler, spacing, eta, sigma_min, size, init, strength, noise_mult, post, guidance, tile, overlap, wrap, merge"]
    # A job without a seed: seeds derived from (job index, image) by xurdif.seeds, 31 bits.
    assert jobs[1].seeds() == [render_seed(1, 0)] == [1079587425] and render_seed(1, 1) == 128358735


@pytest.mark.parametrize("line,msg", [
    ("x | n=two", "p.txt:1: n must be an integer, got 'two'"),
    ("x | sampler=ddin", "p.txt:1: unknown sampler 'ddin'; did you mean 'ddim'?"),
    ("x | strength=0", "p.txt:1: strength must be in (0, 1]"),
    ("x | size=96y64", "p.txt:1: size must be WIDTHxHEIGHT"),
    ("x | post=gama:1", "p.txt:1: unknown postprocessing op 'gama'; did you mean 'gamma'?"),
    ("x | n", "p.txt:1: expected key=value"),
    ("x | eta=inf", "p.txt:1: eta must be a number or null, got 'inf'"),
    ("x | eta=1.5", "p.txt:1: eta must be in 0..1 (0 deterministic, 1 DDPM-like), got 1.5"),
    ("x | post=median:999", "p.txt:1: postprocessing op 'median' takes 3..15, got '999'"),
    ("x | post=grain:nan", "p.txt:1: postprocessing op 'grain' needs a number, got 'nan'"),
])
def test_prompt_line_errors(line, msg):
    jobs, errors = parse_prompts_text(line, "p.txt", Job())
    assert not jobs and len(errors) == 1 and errors[0].startswith(msg), errors


def test_yaml_job_file(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("""defaults: {steps: 12, sampler: dpmpp_2m}
presets:
  mine: contrast:1.2,grain:0.01
jobs:
  - plain prompt
  - prompt: guided
    n: 2
    post: mine
    init: fox.png
    guidance: {scale: 0.5}
  - prompt: broken
    stepz: 3
""")
    jobs, errors, presets = load_jobs(f, Job(), {"n": 4})
    assert [j.prompt for j in jobs] == ["plain prompt", "guided"]
    assert jobs[0].steps == 12 and jobs[0].sampler == "dpmpp_2m" and jobs[0].n == 4
    assert jobs[1].n == 2 and jobs[1].line == 6
    # The guidance block is parsed as the job loads: its scale, every other key at its default.
    assert jobs[1].guidance == GuidanceCfg(scale=0.5) and jobs[0].guidance is None
    assert jobs[1].init == str(tmp_path / "fox.png") and presets == {"mine": "contrast:1.2,grain:0.01"}
    # The line of the bad key (the job starts on 11).
    assert errors[0].startswith(f"{f}:12: unknown option 'stepz'; did you mean 'steps'?")
    f.write_text("default: {}\njobs: [a]\n")
    with pytest.raises(JobError, match=r"jobs.yaml:1: unknown key 'default'; did you mean 'defaults'"):
        load_jobs(f, Job())


def test_slugs_never_escape_the_output_folder(tmp_path):
    assert outputs.slugify("../../etc/passwd") == "etc-passwd"
    assert outputs.slugify("Ünïcode / \\ ..") == "n-code"
    assert outputs.slugify("...") == "untitled" and len(outputs.slugify("a" * 500)) == outputs.SLUG_MAX
    with pytest.raises(ValueError, match="escapes the output folder"):
        outputs.safe_path(tmp_path, "../x.png")


# --- rendering ---------------------------------------------------------------

def test_render_outputs_metadata_resume_and_overwrite(model_file, tmp_path):
    jobs, errors = parse_prompts_text(
        "../../etc/passwd | n=3 seed=5 steps=4 size=24x16\n"
        "a face | n=2 steps=4 sampler=dpmpp_2m post=contrast:1.2,grain:0.02\n", "p.txt", Job())
    assert not errors
    out = tmp_path / "out"
    res = render(model_file, jobs, out, batch_size=2, progress=False)
    assert res.written == 5 and not res.failures
    got = images(out)
    face = [f"0001-a-face/{s}.png" for s in jobs[1].seeds()]
    assert sorted(got) == sorted(["0000-etc-passwd/5.png", "0000-etc-passwd/6.png",
                                  "0000-etc-passwd/7.png"] + face)
    # Every file lies inside the output folder; sizes are (H, W) = (16, 24) and the model's 16x16.
    assert all(p.resolve().is_relative_to(out.resolve()) for p in tmp_path.rglob("*") if p.is_file()
               and "cache" not in p.parts)
    assert got["0000-etc-passwd/5.png"].shape == (16, 24, 3) and got[face[0]].shape == (16, 16, 3)
    assert not np.array_equal(got["0000-etc-passwd/5.png"], got["0000-etc-passwd/6.png"])
    with Image.open(out / "0000-etc-passwd/6.png") as im:
        text = dict(im.text)
    params = json.loads(text["parameters"])
    assert text["prompt"] == "../../etc/passwd" and text["seed"] == "6"
    assert params["steps"] == 4 and params["size"] == [24, 16] and params["weights"] == "ema"
    import hashlib
    assert text["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    recs = manifest(out)
    assert sorted(r["file"] for r in recs) == sorted(got) and recs[0]["model_sha256"] == text["model_sha256"]
    # Contact sheets lie beside the prompt folders, which hold samples only (tools/evaluate.py
    # --fake on a prompt folder must not score a sheet as one more sample).
    assert res.contact_sheets == [out / "contact-sheets" / "0000-etc-passwd.png",
                                  out / "contact-sheets" / "0001-a-face.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("[0-9]*/*")) == sorted(got)
    assert pixels(res.contact_sheets[0]).shape == (2 + 2 * 18, 2 + 2 * 26, 3)  # 3 images on a 2x2 grid

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*.png")}
    again = render(model_file, jobs, out, batch_size=2, progress=False)
    assert again.written == 0 and again.skipped == 5
    assert {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*.png")} == mtimes
    redo = render(model_file, jobs, out, batch_size=2, progress=False, overwrite=True)
    assert redo.written == 5 and len(manifest(out)) == 5
    assert all(np.array_equal(a, images(out)[k]) for k, a in got.items())  # reproducible pixels
    # Raw weights differ from EMA weights.
    raw = render(model_file, jobs[:1], tmp_path / "raw", weights="model", batch_size=2, progress=False)
    assert raw.written == 3
    assert not np.array_equal(pixels(tmp_path / "raw/0000-etc-passwd/5.png"), got["0000-etc-passwd/5.png"])


def test_init_images_and_failures_listed(model_file, tmp_path, capsys):
    Image.fromarray(np.full((30, 60, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "p.txt").write_text(
        "wide | init=wide.png strength=0.3 steps=10\n"
        "broken | init=broken.png\n"
        "typo | stpes=3\n"
        "fine | steps=3 size=16x8\n")
    out = tmp_path / "out"
    rc = main([str(model_file), str(tmp_path / "p.txt"), "-o", str(out), "--no-progress", "--batch-size", "4"])
    err = capsys.readouterr()
    assert rc == 1
    assert f"{tmp_path / 'p.txt'}:2: cannot read init image" in err.err
    assert f"{tmp_path / 'p.txt'}:3: unknown option 'stpes'; did you mean 'steps'?" in err.err
    assert "2 failed:" in err.err and "contact sheets:" in err.out
    got = images(out)
    # The 2:1 init keeps its aspect: longer side = the model's 16 px, sides multiples of the stride.
    wide = next(v for k, v in got.items() if k.startswith("0000-wide/"))
    assert wide.shape == (8, 16, 3)
    # strength 0.3 keeps much of the flat grey init (200/255 ≈ 0.78).
    assert abs(wide.mean() / 255 - 200 / 255) < 0.15
    assert next(v for k, v in got.items() if k.startswith("0003-fine/")).shape == (8, 16, 3)


def test_cli_missing_model_is_one_line(tmp_path, capsys):
    rc = main([str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model file not found" in err[0] and "nope" in err[0]


@pytest.mark.parametrize("damage", ["truncated", "not safetensors", "empty"])
def test_cli_damaged_model_file_is_one_line(model_file, tmp_path, capsys, damage):
    data = model_file.read_bytes()
    bad = tmp_path / "run" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes({"truncated": data[:len(data) // 2], "not safetensors": b"PK\x03\x04" + data[:64],
                     "empty": b""}[damage])
    for model in (bad, bad.parent):  # the file, or the run folder that holds it
        rc = main([str(model), "-o", str(tmp_path / "o"), "--no-progress", "--steps", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"error: {bad}: not a valid model file (truncated or not safetensors)"]
    assert not list((tmp_path / "o").glob("*/*.png"))


def test_cli_unusable_model_metadata_is_one_line(model_file, tmp_path, capsys):
    from xurdif.weights import load_state, read_meta

    meta = read_meta(model_file)
    meta.schedule, meta.value_range = "weird", (1.0, 1.0)
    bad = tmp_path / "bad.safetensors"
    save_model_file(bad, meta, load_state(model_file, "model"), None)
    rc = main([str(bad), "-o", str(tmp_path / "o"), "--no-progress", "--steps", "2"])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"error: {bad}: unusable model metadata: schedule 'weird' (valid: cosine, linear, cosine_urdiffusion); "
        "value_range [1.0, 1.0] (must be [low, high] with low < high)"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_are_as_readable_as_the_umask_allows(model_file, tmp_path, umask):
    """Run folders on a shared file system are read by other users and machines: every file
    gets the mode a plain open() would give, 0666 minus the umask (mkstemp alone gives 0600)."""
    from xurdif.atomic import atomic_write

    old = os.umask(umask)
    try:
        jobs, _ = parse_prompts_text("a | n=1 steps=2\n", "p.txt", Job())
        res = render(model_file, jobs, tmp_path / "out", batch_size=1, progress=False)
        with atomic_write(tmp_path / "m.safetensors") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    files = [res.contact_sheets[0], *(tmp_path / "out").glob("[0-9]*/[0-9]*.png"),
             tmp_path / "out" / "manifest.jsonl", tmp_path / "m.safetensors"]
    assert len(files) == 4
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o666 & ~umask)}


def test_reconcile_repairs_any_interrupted_state(tmp_path):
    out = tmp_path / "out"
    (out / "0000-a").mkdir(parents=True)
    recs = []
    for seed in (1, 2, 3):
        rec = {"file": f"0000-a/{seed}.png", "seed": seed, "prompt": "a", "model_sha256": "x", "params": {}}
        outputs.save_image(out, rec["file"], torch.rand(3, 8, 8), rec)
        recs.append(rec)
    lines = (out / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    # Image 2's line lost (killed between PNG and line), image 3's torn, a stray temp file,
    # and a line whose PNG vanished.
    ghost = json.dumps({**recs[0], "file": "0000-a/9.png"}).encode() + b"\n"
    (out / "manifest.jsonl").write_bytes(lines[0] + ghost + lines[2][:10])
    (out / "0000-a/.4.png.tmp").write_bytes(b"partial")
    done = outputs.reconcile(out)
    assert sorted(done) == ["0000-a/1.png", "0000-a/2.png", "0000-a/3.png"]
    assert sorted(r["file"] for r in manifest(out)) == sorted(done)
    assert not list(out.glob("**/*.tmp"))


def test_kill_9_mid_run_then_rerun_equals_uninterrupted_run(model_file, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one | n=4\ntwo | n=4 sampler=ddpm\nthree | n=2 post=grain:0.05\n")
    cmd = [sys.executable, str(ROOT / "tools/sample.py"), str(model_file), str(prompts),
           "--steps", "20", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cmd + ["-o", str(ref)], env=env, check=True, capture_output=True)

    proc = subprocess.Popen(cmd + ["-o", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (
            (killed / "manifest.jsonl").exists() and (killed / "manifest.jsonl").stat().st_size > 0):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = images(killed)
    assert 0 < len(partial) < 10, "the kill should land mid-run"
    subprocess.run(cmd + ["-o", str(killed)], env=env, check=True, capture_output=True)
    a, b = images(ref), images(killed)
    assert sorted(a) == sorted(b) and len(a) == 10
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ma, mb = manifest(ref), manifest(killed)
    assert len(mb) == 10 and sorted(ma, key=lambda r: r["file"]) == sorted(mb, key=lambda r: r["file"])


def test_ctrl_c_finishes_the_batch_and_stops_cleanly(model_file, tmp_path):
    cmd = [sys.executable, str(ROOT / "tools/sample.py"), str(model_file), "--prompt", "x", "--n", "12",
           "--steps", "20", "--batch-size", "3", "--no-progress", "--threads", "1", "-o", str(tmp_path / "o")]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    man = tmp_path / "o" / "manifest.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (man.exists() and man.stat().st_size > 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    # The batch in flight was finished: whole batches only, nothing half-written.
    n = len(images(tmp_path / "o"))
    assert n % 3 == 0 and 3 <= n < 12 and len(manifest(tmp_path / "o")) == n
    assert not list((tmp_path / "o").glob("**/*.tmp"))


def test_bad_guidance_key_is_reported_with_job_file_and_line(model_file, tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("jobs:\n  - fine\n  - {prompt: bad key, guidance: {sclae: 2}}\n")
    jobs, errors, _ = load_jobs(f, Job(steps=1))
    message = "guidance: unknown key 'sclae'; did you mean 'scale'? valid keys: " + ", ".join(GUIDANCE_KEYS)
    # Found while the job file loads (the bad job fails alone, the others render) ...
    assert errors == [f"{f}:3: {message}"] and [j.prompt for j in jobs] == ["fine"]
    # ... and by the renderer for a job made otherwise (the studio's, say).
    bad = Job(prompt="bad key", steps=1, guidance={"sclae": 2}, source=str(f), line=3)
    res = render(model_file, [bad], tmp_path / "out", progress=False)
    assert res.failures == [f"{f}:3: {message}"] and res.written == 0


def test_guided_jobs_render_record_their_guides_and_fail_alone(model_file, tmp_path, capsys):
    import open_clip

    arch = "xurdif-render-tiny-clip"
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / f"{arch}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{arch}.json")
    (tmp_path / "jobs.yaml").write_text(
        "defaults: {steps: 3, n: 1, seed: 5}\n"
        "jobs:\n"
        "  - {prompt: a plain face}\n"
        f"  - {{prompt: a guided face, guidance: {{clip_model: {arch}, clip_weights: none, cutouts: 2}}}}\n"
        f"  - {{prompt: no weights, guidance: {{clip_model: {arch}, clip_weights: {tmp_path}/missing.pt}}}}\n"
        "  - {prompt: bad key, guidance: {sclae: 2}}\n")
    out = tmp_path / "out"
    rc = main([str(model_file), str(tmp_path / "jobs.yaml"), "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{tmp_path}/missing.pt" in err and "sclae" in err and "scale" in err
    recs = {r["prompt"]: r for r in manifest(out)}
    assert set(recs) == {"a plain face", "a guided face"}
    assert recs["a plain face"]["params"]["guidance"] == {}  # unguided: nothing recorded
    guides = recs["a guided face"]["params"]["guidance"]
    assert json.dumps(guides).count("a guided face") >= 1  # the prompt is the CLIP text
    with Image.open(out / recs["a guided face"]["file"]) as im:
        assert im.text["prompt"] == "a guided face"
        assert json.loads(im.text["parameters"]) == recs["a guided face"]["params"]
