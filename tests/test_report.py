"""Run reports: written by the trainer, rebuilt by xurdif-report, compared across runs."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xurdif.recipe import load_recipe
from xurdif.report.cli import main as report_main
from xurdif.report.data import folder_size
from xurdif.report.svg import fmt
from xurdif.report import training
from xurdif.train import outputs as run_outputs
from xurdif.train.cli import main as launch_main
from xurdif.train.outputs import RunOutputs

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RECIPE = ROOT / "tests" / "recipes" / "fixture.yaml"


class Page(HTMLParser):
    """The parts of a report a test checks: images, plots, tables' cells and the data block."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[str] = []
        self.svgs: list[str] = []
        self.polylines: dict[str, int] = {}
        self.cells: dict[tuple[str, str], str] = {}
        self.json = ""
        self.rows: list[list[str]] = []
        self._svg = None
        self._cell = None
        self._json = False
        self._td = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "svg":
            self._svg = a["id"]
            self.svgs.append(a["id"])
            self.polylines[a["id"]] = 0
        elif tag == "polyline":
            self.polylines[self._svg] += 1
        elif tag == "td":
            self._td, self._cell = "", a.get("data-tag")
        elif tag == "script" and a.get("id") == "xurdif-scalars":
            self._json = True
        elif tag == "tr":
            self.rows.append([])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._svg = None
        elif tag == "script":
            self._json = False
        elif tag == "td" and self._td is not None:
            self.rows[-1].append(self._td)
            self._td = None
            self._cell = None

    def handle_data(self, data):
        if self._json:
            self.json += data
        if self._td is not None:
            self._td += data
        if self._cell:
            self.cells[self._cell] = self._td


def tb_scalars(run: Path) -> dict[str, list[list]]:
    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 1})
    ea.Reload()
    return {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def check_images_exist(page: Page, html: Path) -> None:
    assert page.imgs
    for src in page.imgs:
        assert (html.parent / unquote(src)).is_file(), src


LIVE_PAGES: list[str] = []  # the report as the fixture run wrote it, each time


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fixture"
    real = run_outputs.write_report

    def keep(runs, path):
        real(runs, path)
        LIVE_PAGES.append(Path(path).read_text())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_outputs, "write_report", keep)
        rc = launch_main([str(FIXTURE_RECIPE), f"train.output_dir={out}", "train.steps=20", "samples.every_steps=10",
                          "checkpoint.every_steps=10", "loss.l1=0.5"])
    assert rc == 0
    return out


def test_report_reloads_itself_while_training_and_not_after(run):
    reloads = ["<script id=reload>" in text for text in LIVE_PAGES]
    assert len(reloads) > 3 and all(reloads[:-1]) and not reloads[-1]
    assert "step 10 of 20 (50%)" in "".join(LIVE_PAGES[:-1])
    final = (run / "report.html").read_text()
    assert final == LIVE_PAGES[-1] and "Not training: this page is final." in final
    assert '<p id=progress>step 20 of 20 (100%)</p>' in final
    # Grids open full size on a click (each is a link to its file too).
    assert '<a href="samples/step-0000020.png"><img class=zoom src="samples/step-0000020.png"' in final


def test_trainer_keeps_report_current_and_equal_to_tensorboard(run):
    html = run / "report.html"
    page = Page(html.read_text())
    tb = tb_scalars(run)
    for tag in ("loss/total", "loss/l2", "loss/l1", "train/lr", "train/images_per_sec", "train/time_left_s"):
        assert tag in tb, tag
    # Every scalar has its plot, one line each, and the report's numbers are tb/'s.
    assert sorted(page.svgs) == sorted("plot-" + t.replace("/", "-") for t in tb)
    assert all(n == 1 for n in page.polylines.values()), page.polylines
    data = json.loads(page.json)["fixture"]
    assert data == tb
    assert [s for s, _ in tb["loss/total"]] == [5, 10, 15, 20]
    assert tb["train/time_left_s"][-1][1] == 0.0 and tb["train/time_left_s"][0][1] > 0
    for tag, values in tb.items():
        assert page.cells[tag] == fmt(values[-1][1]), tag
    # Grids as a timeline, images by relative path, all present.
    check_images_exist(page, html)
    assert page.imgs == ["samples/step-0000010.png", "samples/step-0000020.png"]
    # Checkpoints with step and size; the recipe as resolved.
    ck = [r for r in page.rows if len(r) == 4 and r[3].startswith("checkpoints/")]
    sizes = [folder_size(run / "checkpoints" / f"step-00000{s}") for s in (10, 20)]
    assert 1e6 < sizes[0] < 1e7
    assert [(int(r[1]), r[2]) for r in ck] == [(10, f"{sizes[0] / 2**20:.1f} MB"), (20, f"{sizes[1] / 2**20:.1f} MB")]
    assert load_recipe(run / "recipe.yaml").train.steps == 20
    assert "steps: 20" in html.read_text() and "model.safetensors (export)" in html.read_text()


def test_xurdif_report_rebuilds_the_same_numbers_from_tensorboard(run, tmp_path, capsys):
    copy = tmp_path / "fixture"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    assert report_main([str(copy)]) == 0
    assert capsys.readouterr().out.strip() == str(copy / "report.html")
    rebuilt = Page((copy / "report.html").read_text())
    assert json.loads(rebuilt.json) == json.loads(Page((run / "report.html").read_text()).json)
    check_images_exist(rebuilt, copy / "report.html")


def test_compare_overlays_curves_and_puts_grids_side_by_side(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("lr: 0.002", "lr: 0.0005"))
    shutil.rmtree(other / "samples")
    (other / "samples").mkdir()
    shutil.copy(run / "samples" / "step-0000010.png", other / "samples" / "step-0000010.png")
    out = tmp_path / "cmp" / "compare.html"
    assert report_main([str(run), str(other), "-o", str(out)]) == 0
    page = Page(out.read_text())
    assert all(n == 2 for n in page.polylines.values()) and "plot-loss-total" in page.svgs
    check_images_exist(page, out)
    assert len(page.imgs) == 3 and all(src.startswith("..") for src in page.imgs)
    assert ["optim.lr", "0.002", "0.0005"] in page.rows
    assert set(json.loads(page.json)) == {"fixture", "other"}


def test_live_report_shows_step_of_total_and_a_smoothed_time_left(tmp_path):
    recipe = load_recipe(FIXTURE_RECIPE)
    out = RunOutputs(recipe, tmp_path / "r", is_main=True)
    training(tmp_path / "r", True)
    try:
        out.open()
        # Seven log steps at 10 images/s, then one at 1 (the machine busy for a moment): the time
        # left is the last one's at the mean speed of the last eight log steps, not at 1 image/s.
        for k in range(1, 9):
            ips = 10.0 if k < 8 else 1.0
            out.log_scalars({"total": 0.5, "images_per_sec": ips, "time_left_s": 1100.0, "steps_total": 160}, k * 10)
        live = (tmp_path / "r" / "report.html").read_text()
    finally:
        training(tmp_path / "r", False)
    assert "<script id=reload>" in live and "<p id=progress>step 80 of 160 (50%)</p>" in live
    summary = next(r for r in Page(live).rows if r and r[0] == "r")
    # 1100 s at 1 image/s; the harmonic mean of seven 10s and a 1 is 4.71 images/s: 234 s.
    assert summary[1] == "step 80 of 160 (50%)" and summary[3] == "0:03:54"
    out.log_scalars({"total": 0.5, "images_per_sec": 1.0, "time_left_s": 1000.0, "steps_total": 160}, 90)
    text = (tmp_path / "r" / "report.html").read_text()
    summary = next(r for r in Page(text).rows if r and r[0] == "r")
    # Six 10s and two 1s: 3.08 images/s, 325 s.
    assert summary[1] == "step 90 of 160 (56%)" and summary[3] == "0:05:25"
    assert "<script id=reload>" not in text  # not training any more
    out.close()


def test_xurdif_report_of_a_run_another_process_trains_reloads(run, tmp_path):
    import subprocess
    import sys

    copy = tmp_path / "fixture"
    shutil.copytree(run, copy)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from xurdif.lock import folder_lock\n"
                               f"with folder_lock({str(copy)!r}, 'training run'):\n print('held', flush=True); "
                               "sys.stdin.read()"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert report_main([str(copy)]) == 0
        assert "<script id=reload>" in (copy / "report.html").read_text()
    finally:
        holder.communicate("")
    assert report_main([str(copy)]) == 0
    assert "<script id=reload>" not in (copy / "report.html").read_text()


def test_in_training_kid_and_memorisation_are_plotted(tmp_path):
    recipe = load_recipe(FIXTURE_RECIPE)
    out = RunOutputs(recipe, tmp_path / "r", is_main=True)
    out.open()
    out.log_scalars({"total": 0.5, "l2": 0.5, "lr": 1e-3}, 5)
    out.log_eval({"kid": 0.25, "kid_std": 0.01, "memorised": 0.125}, 5)
    out.log_eval({"kid": 0.125, "kid_std": 0.01, "memorised": 0.0}, 10)
    out.close()
    page = Page((tmp_path / "r" / "report.html").read_text())
    assert {"plot-eval-kid", "plot-eval-memorised", "plot-loss-total", "plot-train-lr"} <= set(page.svgs)
    data = json.loads(page.json)["r"]
    assert data["eval/kid"] == [[5, 0.25], [10, 0.125]] and data["eval/memorised"] == [[5, 0.125], [10, 0.0]]
    assert data == tb_scalars(tmp_path / "r")


def test_copies_section_says_when_copying_began_and_shows_the_closest_pairs(tmp_path):
    recipe = load_recipe(FIXTURE_RECIPE)
    out = RunOutputs(recipe, tmp_path / "r", is_main=True)
    out.open()
    out.log_eval({"kid": 0.25, "memorised": 0.0}, 5)
    out.log_eval({"kid": 0.125, "memorised": 0.03}, 10)
    out.log_eval({"kid": 0.1, "memorised": 0.2, "memorised_over_max": 1.0}, 15)
    out.write_closest(torch.zeros(3, 8, 24, dtype=torch.uint8), "best")
    out.write_closest(torch.full((3, 8, 24), 255, dtype=torch.uint8), "last")
    out.write_report()
    out.close()
    text = (tmp_path / "r" / "report.html").read_text()
    assert "<li>first sample copying a training image: step 10</li>" in text
    assert "<li>memorised share over eval.memorised_max from: step 15</li>" in text
    assert "no better model in" not in text  # no model-best.safetensors in this run
    page = Page(text)
    assert ["eval/closest-best.png", "eval/closest-last.png"] == [i for i in page.imgs if "closest" in i]
    check_images_exist(page, tmp_path / "r" / "report.html")


def test_resumed_outputs_keep_the_earlier_sessions_scalars(tmp_path):
    recipe = load_recipe(FIXTURE_RECIPE)
    first = RunOutputs(recipe, tmp_path / "r", is_main=True)
    first.open()
    first.log_scalars({"total": 0.5}, 5)
    first.log_scalars({"total": 0.375}, 10)
    first.close()
    again = RunOutputs(recipe, tmp_path / "r", is_main=True)
    again.open()
    again.log_scalars({"total": 0.25}, 10)  # the step after the checkpoint, logged again: the new value wins
    again.close()
    assert json.loads(Page((tmp_path / "r" / "report.html").read_text()).json)["r"]["loss/total"] == [
        [5, 0.5], [10, 0.25]]


def test_report_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: run folder not found\n"


def live_page(tmp_path: Path, written: float, every: int | None = None, stale_after: int | None = None) -> Path:
    """A live report (its run still training) written at `written`; `every` and `stale_after`
    (seconds) shorten the page's reload interval and freshness for a browser test."""
    import re

    from xurdif.report import gather, render_html

    run = tmp_path / "r"
    run.mkdir(exist_ok=True)
    data = gather(run, scalars={"loss/total": {10: 0.5}})
    data.live = True
    html = render_html([data], run / "report.html", written=written)
    if every is not None:
        html = re.sub(r'data-every="\d+"', f'data-every="{every}"', html)
    if stale_after is not None:
        html = re.sub(r'data-stale-after="\d+"', f'data-stale-after="{stale_after}"', html)
    (run / "report.html").write_text(html)
    return run / "report.html"


def test_live_report_carries_its_time_and_how_to_refresh_it(tmp_path):
    import time

    from xurdif.report import gather, render_html
    from xurdif.report.html import RELOAD_S, STALE_S

    html = live_page(tmp_path, written=1_700_000_000.5).read_text()
    assert "<script id=reload>" in html and "setInterval" not in html
    cmd = f"xurdif-report {tmp_path / 'r'}"
    assert (f'<p id=stale hidden data-written="1700000000500" data-every="{RELOAD_S}" '
            f'data-stale-after="{STALE_S}" data-command="{cmd}"></p>') in html
    assert f"Updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(1_700_000_000.5))}." in html
    # Another output: the command names it; a final page has neither the line nor the script.
    data = gather(tmp_path / "r", scalars={"loss/total": {10: 0.5}})
    data.live = True
    assert f'data-command="{cmd} -o {tmp_path / "c.html"}"' in render_html([data], tmp_path / "c.html")
    data.live = False
    final = render_html([data], tmp_path / "r" / "report.html")
    assert "id=stale" not in final and "<script id=reload>" not in final


def test_live_report_in_chromium_reloads_while_fresh_and_stops_when_stale(tmp_path):
    """A live page whose trainer was killed (kill -9: no final page) stops reloading and says so."""
    import re
    import time

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from browser import launch_chromium

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            errors, loads = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("load", lambda: loads.append(time.time()))

            # Written 12 minutes ago, reloading every second: stale, so no reload, and the line.
            stale = live_page(tmp_path, written=time.time() - 12 * 60, every=1)
            page.goto(stale.as_uri())
            page.wait_for_timeout(3000)
            assert len(loads) == 1
            line = page.locator("#stale")
            assert line.is_visible()
            text = line.inner_text()
            assert re.fullmatch(r"No update since \d\d:\d\d \(12 min ago\): the run seems to have stopped\. "
                                rf"Run xurdif-report {re.escape(str(tmp_path / 'r'))} to refresh\.", text), text
            assert page.inner_text("#live") == "Not reloading: no update for a while."

            # Written just now: it reloads (every second here) and shows no such line.
            loads.clear()
            fresh = live_page(tmp_path, written=time.time(), every=1, stale_after=600)
            page.goto(fresh.as_uri())
            page.wait_for_timeout(3500)
            assert len(loads) >= 2
            assert not page.locator("#stale").is_visible()
            assert page.inner_text("#live").startswith("Training: this page reloads every")

            # A fresh page that turns stale while open: the next tick stops instead of reloading.
            loads.clear()
            page.goto(live_page(tmp_path, written=time.time(), every=1, stale_after=2).as_uri())
            page.wait_for_timeout(5000)
            assert page.locator("#stale").is_visible() and "(0 min ago)" in page.inner_text("#stale")
            n = len(loads)
            page.wait_for_timeout(2000)
            assert len(loads) == n
            assert errors == []
        finally:
            browser.close()
