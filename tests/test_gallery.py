"""The render gallery: OUT/index.html with contact sheets, every image's seed,
parameters and re-render command, and the failures."""
from __future__ import annotations

import json
import shlex
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from tiny_model import save_tiny_model
from xurdif.render.cli import main


class Gallery(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[str] = []
        self.cards: dict[str, str] = {}  # file -> card text
        self.commands: dict[str, str] = {}
        self.failures: list[str] = []
        self._card = self._where = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "div" and a.get("class") == "card":
            self._card = a["data-file"]
            self.cards[self._card] = ""
        elif tag == "code" and self._card:
            self._where = "code"
            self.commands[self._card] = ""
        elif tag == "li":
            self._where = "li"
            self.failures.append("")

    def handle_endtag(self, tag):
        if tag in ("code", "li"):
            self._where = None
            if tag == "code":
                self._card = None

    def handle_data(self, data):
        if self._where == "code":
            self.commands[self._card] += data
        elif self._where == "li":
            self.failures[-1] += data
        elif self._card:
            self.cards[self._card] += data


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_gallery_shows_every_image_its_parameters_command_and_failures(tmp_path, capsys, monkeypatch):
    model = save_tiny_model(tmp_path / "tiny.safetensors")
    (tmp_path / "p.txt").write_text(
        "a red fox | n=2 steps=3\n"
        "broken | init=missing.png\n"
        "a harbour | seed=7 n=2 steps=2 sampler=ddim eta=0.5 post=contrast:1.1\n")
    out = tmp_path / "out"
    rc = main([str(model), str(tmp_path / "p.txt"), "-o", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 1
    assert f"gallery: {out / 'index.html'}" in printed.out
    page = Gallery((out / "index.html").read_text())
    # Every image referenced exists: 4 renders and 2 contact sheets.
    for src in page.imgs:
        assert (out / unquote(src)).is_file(), src
    assert sorted(unquote(s) for s in page.imgs if s.startswith("contact-sheets/")) == [
        "contact-sheets/0000-a-red-fox.png", "contact-sheets/0002-a-harbour.png"]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 4 and set(page.cards) == {r["file"] for r in records}
    for rec in records:
        text = page.cards[rec["file"]]
        assert f"seed {rec['seed']}" in text and f"steps={rec['params']['steps']}" in text
    assert "sampler=ddim spacing=uniform eta=0.5" in page.cards["0002-a-harbour/7.png"]
    assert "post=contrast:1.1" in page.cards["0002-a-harbour/8.png"]
    assert page.failures == [f"{tmp_path / 'p.txt'}:2: cannot read init image {tmp_path / 'missing.png'}: "
                             f"[Errno 2] No such file or directory: '{tmp_path / 'missing.png'}'"]

    # The command line shown re-renders the image (same seed and options, a fresh folder).
    monkeypatch.chdir(tmp_path)
    cmd = shlex.split(page.commands["0002-a-harbour/8.png"])
    assert cmd[0] == "xurdif-sample" and cmd[-2:] == ["-o", "rerender"]
    assert main(cmd[1:] + ["--no-progress"]) == 0
    again = pixels(tmp_path / "rerender" / "0000-a-harbour" / "8.png")
    assert np.abs(again - pixels(out / "0002-a-harbour" / "8.png")).max() <= 1
    assert (tmp_path / "rerender" / "index.html").is_file()
