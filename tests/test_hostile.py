"""Hostile input, second round (issue 30): alias bombs, huge integers, control
characters in names, dangling links and floods of unreadable files."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from xurdif.data import open_dataset
from xurdif.recipe import DataCfg, RecipeError, load_recipe
from xurdif.render.job_files import load_jobs
from xurdif.render.jobs import Job, JobError
from xurdif.shown import clean, shown

FIXTURE = Path(__file__).parent / "fixtures" / "emoji-faces-32"


def bomb(levels: int, leaf: str = "x") -> str:
    """`levels` lines of nine aliases each: 9 ** levels values once expanded."""
    lines = [f"l0: &l0 [{', '.join([leaf] * 9)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_recipe_is_refused_in_one_line_and_at_once(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb(9) + "data: {path: x}\ntrain: {images: 10, seed: *l8}\n")
    started = time.process_time()
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert time.process_time() - started < 20  # it ran out of memory before
    assert e.value.problems == [f"{p}: invalid YAML: expands to more than 2,000,000 values (YAML aliases, "
                                "`*name`, repeat whole parts); write the values out or use fewer aliases"]


def test_a_smaller_bomb_under_the_limit_is_shown_bounded(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb(5) + "data: {path: x}\ntrain: {images: 10, seed: *l4}\n")  # 59,049 values
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    lines = [x for x in e.value.problems if "train.seed" in x]
    assert len(lines) == 1 and len(lines[0]) < 300 + len(str(p)) and "..." in lines[0]
    assert lines[0].startswith(f"{p}: train.seed: got [[[...], [...]") and lines[0].endswith("; expected an integer")


def test_an_alias_bomb_job_file_is_refused(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text(bomb(9, "a") + "jobs: *l8\n")
    with pytest.raises(JobError, match=r"jobs.yaml:1: invalid YAML: expands to more than 2,000,000 values"):
        load_jobs(f, Job())


def test_huge_integers_name_their_key_or_line(tmp_path):
    digits = "7" * 5000
    p = tmp_path / "r.yaml"
    p.write_text(f"data: {{path: x}}\ntrain:\n  images: {digits}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert e.value.problems == [f"{p}: line 3 invalid YAML: an integer of 5000 digits; at most 40"]
    ok = tmp_path / "ok.yaml"
    ok.write_text("data: {path: x}\ntrain: {images: 10}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(ok, [f"train.images={digits}"])
    assert e.value.problems[0].startswith("override train.images: invalid YAML value '777")
    assert e.value.problems[0].endswith(": an integer of 5000 digits; at most 40") and len(e.value.problems[0]) < 200
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs:\n  - a cat\n  - prompt: a dog\n    seed: {digits}\n")
    with pytest.raises(JobError, match=r"jobs.yaml:4: invalid YAML: an integer of 5000 digits; at most 40"):
        load_jobs(jobs, Job())
    text = tmp_path / "prompts.txt"
    text.write_text(f"a cat\na dog | seed={digits}\n")
    found, errors, _ = load_jobs(text, Job())
    assert [j.prompt for j in found] == ["a cat"] and len(errors) == 1
    assert errors[0].startswith(f"{text}:2: ") and "seed must be an integer" in errors[0] and len(errors[0]) < 300


def test_clean_and_shown_escape_control_characters():
    assert clean("bad\nname\x1b[31mRED\u202e.png") == "bad\\nname\\x1b[31mRED\\u202e.png"
    assert shown("a\nb") == "'a\\nb'"
    assert shown(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"
    assert shown(int("9" * 4300) * 10) == "<an integer of over 4300 digits>"


def unreadable(folder: Path, name: str) -> None:
    (folder / name).write_bytes(b"not an image")


def copy_fixture(folder: Path, count: int) -> None:
    folder.mkdir()
    for name in sorted(os.listdir(FIXTURE))[:count]:
        Image.open(FIXTURE / name).save(folder / name)


def test_file_names_reach_the_log_escaped(tmp_path, caplog):
    folder = tmp_path / "data"
    copy_fixture(folder, 3)
    unreadable(folder, "bad\nname\x1b[31mRED.png")
    caplog.set_level(logging.WARNING, logger="xurdif.data")
    data = open_dataset(DataCfg(path=str(folder), size=16))
    assert len(data) == 3
    [message] = [r.getMessage() for r in caplog.records]
    assert "\n" not in message and "\x1b" not in message
    assert "bad\\nname\\x1b[31mRED.png" in message


def test_a_dangling_link_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "data"
    copy_fixture(folder, 2)
    os.symlink(tmp_path / "gone.png", folder / "link.png")
    caplog.set_level(logging.WARNING, logger="xurdif.data")
    data = open_dataset(DataCfg(path=str(folder), size=16))
    assert len(data) == 2 and [n for n, _ in data.skipped] == [str(folder / "link.png")]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping image {folder / 'link.png'}: a symbolic link to {tmp_path / 'gone.png'}, which does not exist"]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_flood_of_unreadable_files_is_named_ten_times_then_counted(tmp_path, caplog, lazy):
    folder = tmp_path / "data"
    copy_fixture(folder, 2)
    for i in range(25):
        unreadable(folder, f"bad-{i:02d}.png")
    caplog.set_level(logging.WARNING, logger="xurdif.data")
    data = open_dataset(DataCfg(path=str(folder), size=16, cache_max_images=0 if lazy else 20000))
    assert len(data) == 2 and len(data.skipped) == 25
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 11
    assert all(m.startswith(f"skipping image {folder / f'bad-{i:02d}.png'}: ") for i, m in enumerate(messages[:10]))
    assert messages[10] == "skipped 15 more unreadable images (25 of 27 in all)"


@pytest.mark.parametrize("value", ["0", "-3", "x", "9" * 50])
def test_sample_batch_size_out_of_range_names_the_option(value, capsys):
    from xurdif.render.cli import main as sample_main

    with pytest.raises(SystemExit) as e:
        sample_main(["model.safetensors", "--batch-size", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"xurdif-sample: error: argument --batch-size: expected an integer in 1..4096, got {value[:40]!r}"


@pytest.mark.parametrize("argv, option, span", [
    (["--samples", "1"], "--samples", "in 2..1000000"), (["--steps", "0"], "--steps", "in 1..1000"),
    (["--kid-subsets", "-1"], "--kid-subsets", "in 1..100000")])
def test_evaluate_numbers_out_of_range_name_the_option(argv, option, span, capsys):
    from xurdif.evaluate.cli import main as evaluate_main

    with pytest.raises(SystemExit):
        evaluate_main(["--real", "x", *argv])
    assert f"argument {option}: expected an integer {span}, got " in capsys.readouterr().err


def test_make_shards_into_an_existing_file_is_one_line(tmp_path, capsys):
    from xurdif.data.make_shards import main as make_shards_main

    target = tmp_path / "existing.txt"
    target.write_text("x")
    assert make_shards_main([str(FIXTURE), str(target), "--size", "16"]) == 2
    assert capsys.readouterr().err == (f"make_shards: {target}: is a file; OUT_DIR must be a folder "
                                       "(new, or one holding shards)\n")
    assert make_shards_main([str(FIXTURE), str(target / "below"), "--size", "16"]) == 2
    assert capsys.readouterr().err.startswith(f"make_shards: {target}")
    with pytest.raises(SystemExit):
        make_shards_main([str(FIXTURE), str(tmp_path / "o"), "--per-shard", "0"])
    assert "argument --per-shard: expected an integer in 1..10000000, got '0'" in capsys.readouterr().err


def test_places_without_a_line_number_have_none(tmp_path, capsys):
    from xurdif.render.cli import main as sample_main

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    assert sample_main([str(model), "--steps", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: command line: steps must be ") and ":0:" not in err
    with pytest.raises(JobError) as e:
        load_jobs(tmp_path / "missing.yaml", Job())
    assert str(e.value).startswith(f"{tmp_path / 'missing.yaml'}: cannot read job file: ")


def test_job_file_errors_name_the_line_of_the_bad_key(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("jobs:\n  - prompt: a fox\n    n: 2\n    guidance:\n      scale: 0.05\n      stlye: paper.png\n"
                 "  - prompt: a cat\n    n: 2\n    steps: 5000\n  - prompt: a dog\n    guidance:\n"
                 "      cut_min: 2\n")
    jobs, errors, _ = load_jobs(f, Job())
    assert jobs == []
    assert [e.split(": ")[0] for e in errors] == [f"{f}:6", f"{f}:9", f"{f}:12"], errors
    assert "unknown key 'stlye'" in errors[0] and "steps must be in 1..1000" in errors[1]
    assert errors[2].startswith(f"{f}:12: guidance.cut_min: 2.0 is invalid")


def test_shard_member_names_reach_the_log_escaped(tmp_path, caplog):
    import io
    import tarfile

    from xurdif.data.shard_files import read_samples

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        data = b"not an image"
        info = tarfile.TarInfo("bad\nname\x1b[31m.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        data = b"\x80\x03}q\x00."
        info = tarfile.TarInfo("evil\x1b[2J.pickle")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    caplog.set_level(logging.WARNING, logger="xurdif")
    list(read_samples(str(shard), allow_pickle=False))
    messages = [r.getMessage() for r in caplog.records]
    assert any("\\x1b" in m for m in messages), messages  # the name is there, escaped
    assert all("\x1b" not in m and "\n" not in m for m in messages), messages


def test_ctrl_c_while_loading_jobs_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    from xurdif.render import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_jobs", interrupted)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a cat\n")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    assert cli.main([str(model), str(jobs)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
