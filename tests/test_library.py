"""The model library page (xurdif-library) and the model card (README.md beside an export)."""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from tests.test_merge import write_model
from tests.tiny_model import save_tiny_model
from xurdif.library import library_html, scan
from xurdif.library.card import model_card
from xurdif.library.cli import main as library_main
from xurdif.merge import merge
from xurdif.recipe import Recipe, recipe_to_yaml
from xurdif.render.cli import main as render_main
from xurdif.weights import ModelMeta, read_meta, save_model_file


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def retag(path: Path, **changes) -> Path:
    """Rewrite a model file's metadata, weights unchanged."""
    from xurdif.weights import load_state

    meta = dataclasses.replace(read_meta(path), **changes)
    save_model_file(path, meta, load_state(path, "model"), load_state(path, "ema"))
    return path


def fake_run(run: Path, data: Path) -> Path:
    """A run folder as the trainer leaves it: model, recipe, a grid, a checkpoint's tensors, TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    recipe = dataclasses.replace(Recipe(name="faces"), data=dataclasses.replace(Recipe().data, path=str(data)))
    model = save_tiny_model(run / "model.safetensors")
    retag(model, recipe=recipe_to_yaml(recipe), step=10, images_seen=4096,
          extra={"training": {"seconds": 3725.0, "images": 3}})
    (run / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    (run / "samples").mkdir()
    for step, colour in ((5, "red"), (10, "blue")):
        Image.new("RGB", (34, 34), colour).save(run / "samples" / f"step-{step:07d}.png")
    ckpt = run / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, ckpt / "model.safetensors")  # a checkpoint's tensors: no model
    (ckpt / "state.json").write_text(json.dumps({"step": 10, "seconds": 3725.0}))
    w = SummaryWriter(str(run / "tb"))
    for step, kid, memo in ((5, 0.5, 0.25), (10, 0.25, 0.125)):
        w.add_scalar("eval/kid", kid, step)
        w.add_scalar("eval/memorised", memo, step)
    w.close()
    return model


@pytest.fixture
def library(tmp_path) -> Path:
    lib = tmp_path / "lib"
    data = tmp_path / "faces"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(data / f"{i}.png")
    a = fake_run(lib / "faces", data)
    b = write_model(lib / "downloaded" / "b.safetensors", 2)
    merge([a, b], [0.25], lib / "faces" / "mix.safetensors")  # saved into a run folder, but not its run's
    return lib


def entries_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section class=entry id="([^"]+)">(.*?)</section>', html, re.S))


def test_library_lists_every_model_with_lineage_and_command(library, capsys):
    assert library_main([str(library)]) == 0
    out, err = capsys.readouterr()
    page = library / "library.html"
    assert out.strip() == str(page)
    html = page.read_text()
    entries = entries_of(html)
    assert sorted(entries) == ["downloaded/b.safetensors", "faces/mix.safetensors", "faces/model.safetensors"]
    # The checkpoint's tensors are skipped with one warning line, not listed and no crash.
    ckpt = library / "faces" / "checkpoints" / "step-0000010" / "model.safetensors"
    assert err.splitlines() == [f"warning: skipped {ckpt}: not an xurdif model file (metadata 'format' is None, "
                                "expected 'xurdif-model-1')"]
    assert "1 .safetensors files that are not models" in html
    faces = entries["faces/model.safetensors"]
    assert 'src="data:image/png;base64,' in faces and "step 10" in faces  # the last grid, embedded
    assert "1:02:05" in faces and "4,096 images seen" in faces and "3 images" in faces
    assert "KID 0.25, memorised 12.5% at step 10" in faces
    assert "eps prediction" in faces and "preset small" in faces
    assert "merge of model.safetensors (0.75), b.safetensors (0.25)" in entries["faces/mix.safetensors"]
    assert "images seen unknown" in entries["faces/mix.safetensors"]  # not its first parent's
    assert "no sample grid (not in a run folder)" in entries["faces/mix.safetensors"]
    assert "not measured" in entries["downloaded/b.safetensors"]
    for name, body in entries.items():
        cmd = re.search(r"<code class=command>(.*?)</code> <button class=copy", body).group(1)
        assert shlex.split(cmd)[:2] == ["xurdif-sample", str((library / name).resolve())]
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert library_html(library).count("<section class=entry") == 3


def test_the_library_render_command_renders(library, tmp_path):
    entry = next(e for e in scan(library)[0] if e.name == "faces/mix.safetensors")
    args = shlex.split(entry.command)
    assert args[0] == "xurdif-sample"
    out = tmp_path / "out"
    rc = render_main(args[1:] + ["--n", "1", "--steps", "2", "--size", "16x16", "--no-progress", "-o", str(out)])
    assert rc == 0
    images = list(out.glob("0000-sample/*.png"))
    assert len(images) == 1 and Image.open(images[0]).size == (16, 16)


def test_missing_folder_is_one_line(tmp_path, capsys):
    assert library_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: folder not found\n"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_front_matter(library):
    run = library / "faces"
    meta = read_meta(run / "model.safetensors")
    card = model_card(meta, "faces", run, {"eval/kid": {10: 0.25}, "eval/memorised": {10: 0.125}})
    fm = front_matter(card)
    assert fm == {"library_name": "xurdif", "tags": ["diffusion", "unconditional-image-generation", "xurdif"]}
    assert "![Sample grid at step 10](samples/step-0000010.png)" in card
    assert "KID 0.25 at step 10" in card and "memorised share 12.5%" in card
    assert "xurdif-sample model.safetensors --prompt sample --n 4 -o out" in card
    assert yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])["name"] == "faces"

    assert "## Parents" not in card  # trained from scratch


def fine_tune_card(meta: ModelMeta, init_from: str) -> str:
    recipe = Recipe(name="ft", model=dataclasses.replace(Recipe().model, init_from=init_from, license="cc-by-4.0"))
    return model_card(dataclasses.replace(meta, recipe=recipe_to_yaml(recipe)), "ft")


def test_model_card_base_model_is_a_hub_id_and_local_parents_are_listed(library, monkeypatch):
    """The Hub reads base_model as a model id ("owner/name"): a local path there is an
    error on the Hub, so local parents go into the card's body instead."""
    meta = read_meta(library / "faces" / "model.safetensors")
    # Fine-tuned from a Hub model: base_model is its id.
    card = fine_tune_card(meta, "someone/faces-64")
    fm = front_matter(card)
    assert fm["license"] == "cc-by-4.0" and fm["base_model"] == "someone/faces-64"
    assert "## Parents\n\n- `someone/faces-64` (Hugging Face Hub)\n" in card

    # Fine-tuned from local files: no base_model, the path is in the body. A run folder named
    # like owner/name that exists here is local too.
    monkeypatch.chdir(library.parent)
    for local in ("faces/model.safetensors", str(library / "faces" / "model.safetensors"), "lib/faces",
                  "./models/x", "a/b/c"):
        card = fine_tune_card(meta, local)
        fm = front_matter(card)
        assert "base_model" not in fm and fm["license"] == "cc-by-4.0", local
        assert f"## Parents\n\n- `{local}` (local file)\n" in card

    # A merge of local files: each parent with its weight in the body, none in the front matter.
    card = model_card(read_meta(library / "faces" / "mix.safetensors"), "mix")
    fm = front_matter(card)
    assert "base_model" not in fm and "license" not in fm
    assert ("## Parents\n\n- `model.safetensors`, merge weight 0.75 (local file)\n"
            "- `b.safetensors`, merge weight 0.25 (local file)\n") in card
