"""xurdif-studio as a real server: driven by gradio_client and by headless Chromium."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import launch_chromium
from tiny_model import save_tiny_model
from xurdif.render.cli import main as sample_main
from xurdif.render.outputs import read_record

pytest.importorskip("gradio", reason="the studio extra is not installed: pip install -e '.[studio]'")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels(data) -> np.ndarray:
    with Image.open(data) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    save_tiny_model(tmp / "models" / "eps-run" / "model.safetensors")
    save_tiny_model(tmp / "models" / "x0-run" / "model.safetensors", prediction="x0")
    (tmp / "models" / "not-a-model.safetensors").write_bytes(b"junk")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               XDG_CACHE_HOME=str(tmp / "cache"))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "xurdif.studio", "--models", str(tmp / "models"), "--port",
                             str(port), "--out", str(tmp / "out"), "--device", "cpu"],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"studio did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
    yield {"url": url, "tmp": tmp, "out": tmp / "out", "models": tmp / "models"}
    proc.terminate()
    proc.wait(30)
    log.close()


def form(model: str, **kw) -> list:
    """The Render button's inputs, in order, with defaults."""
    v = dict(model=model, prompt="a fox", n=1, seed="7", sampler="ddim", spacing="auto", steps=3, size="", init=None,
             strength=0.6, noise_mult=1.0, eta=0.0, g_text="", g_model="ViT-B-32", g_weights="", g_image=None,
             g_target=None, g_style=None, g_style_w=1.0, g_scale=0.02, post="contrast:1.1", tile="auto", overlap="",
             wrap=False, sigma_min="")
    v.update(kw)
    return list(v.values())


def test_gradio_client_renders_like_the_command_line(studio, tmp_path):
    from gradio_client import Client

    client = Client(studio["url"], verbose=False, download_files=str(tmp_path / "dl"))
    model = str(studio["models"] / "eps-run" / "model.safetensors")
    gallery, message, history = client.predict(*form(model), api_name="/render")
    assert len(gallery) == 1 and gallery[0]["caption"] == "seed 7"
    saved = studio["out"] / "0000-a-fox" / "7.png"
    assert message.startswith(f"Saved 1 image(s) to {saved.parent} (not tiled; gallery: ")
    shown = pixels(gallery[0]["image"])
    assert np.array_equal(shown, pixels(saved)) and shown.shape == (16, 16, 3)
    # The PNG carries the same record as the manifest, as tools/sample.py writes it.
    rec = read_record(saved)
    assert rec["prompt"] == "a fox" and rec["seed"] == 7 and rec["file"] == "0000-a-fox/7.png"
    assert rec["params"]["steps"] == 3 and rec["params"]["sampler"] == "ddim"
    assert rec["params"]["post"] == "contrast:1.1" and rec["params"]["model"] == model
    assert rec["params"]["tile"] == "auto" and rec["params"]["overlap"] is None and rec["params"]["wrap"] is False
    manifest = [json.loads(x) for x in (studio["out"] / "manifest.jsonl").read_text().splitlines()]
    assert rec in manifest and (studio["out"] / "index.html").is_file()
    # The model library of the models folder, as xurdif-library writes it, from the page's link.
    library = urllib.request.urlopen(studio["url"] + "library", timeout=60).read().decode()
    assert "eps-run" in library and "x0-run" in library and "not-a-model.safetensors" in library
    # One code path: the command line renders the same pixels.
    assert sample_main([model, "--prompt", "a fox", "--seed", "7", "--steps", "3", "--sampler", "ddim",
                        "--post", "contrast:1.1", "-o", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert np.array_equal(pixels(tmp_path / "cli" / "0000-a-fox" / "7.png"), shown)

    # Bad input: one message, no image; the history keeps the earlier render below it.
    gallery, message, history = client.predict(*form(str(studio["models"] / "gone.safetensors")), api_name="/render")
    assert history.count("<section") >= 2 and history.index("model file not found") < history.index("7.png")
    assert gallery == [] and message == (f"Error: {studio['models'] / 'gone.safetensors'}: model file not found "
                                         "(give a run folder or a .safetensors file)")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    from gradio_client import handle_file

    gallery, message, _ = client.predict(*form(model, init=handle_file(str(tmp_path / "broken.png"))),
                                         api_name="/render")
    assert gallery == [] and message.startswith("Error: cannot read init image ") and "broken.png" in message
    # The job's origin ("studio: ") is left out: the page is the context.
    gallery, message, _ = client.predict(*form(model, size="abc"), api_name="/render")
    assert gallery == [] and message == "Error: size must be WIDTHxHEIGHT (e.g. 96x64) or one number, got 'abc'"


def history_entries(page) -> list[str]:
    return page.locator("#studio-history section").all_inner_texts()


def wait_for_entries(page, n: int) -> None:
    """Until the history shows n renders (the server keeps every render since it started)."""
    page.wait_for_function(f"document.querySelectorAll('#studio-history section').length == {n}", timeout=120_000)


def test_browser_picks_a_model_renders_keeps_history_and_copies_commands(studio, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=studio["url"].rstrip("/"))
            page = browser.new_page()
            page.goto(studio["url"])
            page.wait_for_selector("#studio-render", timeout=60_000)
            assert "native size 16x16" in page.inner_text("#studio-model-info")
            # The presets and ranges come from xurdif/postprocess.py.
            assert "crisp = contrast:1.1,unsharp:0.6" in page.content() and "median 3..15" in page.content()
            # The renders of the other test: the history is the studio's, since it started.
            before = int(page.wait_for_selector("#studio-history [data-count]").get_attribute("data-count"))
            assert len(history_entries(page)) == before
            page.click("#studio-model input")
            options = page.locator("[role=option]")
            labels = [t.strip() for t in options.all_inner_texts()]
            assert len(labels) == 2 and "x0-run/model.safetensors · 0.3 MB · x0 · 4,096 images seen" in labels[1]
            options.nth(1).click()
            page.locator("#studio-prompt textarea").fill("a browser test")
            page.locator("#studio-seed textarea").fill("11")
            page.click("#studio-render")
            img = page.wait_for_selector("#studio-result img", timeout=120_000)
            shown = pixels(BytesIO(page.request.get(img.get_attribute("src")).body()))
            saved = next(studio["out"].glob("*-a-browser-test/11.png"))
            assert np.array_equal(shown, pixels(saved))
            rec = read_record(saved)
            assert rec["params"]["model"] == str(studio["models"] / "x0-run" / "model.safetensors")
            assert "Saved 1 image(s)" in page.inner_text("#studio-message")
            # Shown whole and nearest-neighbour scaled.
            style = page.eval_on_selector("#studio-history img", "e => [getComputedStyle(e).imageRendering, "
                                                                 "getComputedStyle(e).objectFit]")
            assert style == ["pixelated", "contain"]

            page.locator("#studio-size textarea").fill("abc")
            page.click("#studio-render")
            wait_for_entries(page, before + 2)
            assert page.inner_text("#studio-message").strip() == (
                "Error: size must be WIDTHxHEIGHT (e.g. 96x64) or one number, got 'abc'")
            assert "Traceback" not in page.content()

            # Tiled and wrapped from the page; both earlier renders stay in the history, newest first.
            page.locator("#studio-size textarea").fill("32x16")
            page.locator("#studio-tile textarea").fill("16")
            page.locator("#studio-overlap textarea").fill("4")
            page.check("#studio-wrap input")
            page.click("#studio-render")
            wait_for_entries(page, before + 3)
            entries = history_entries(page)
            assert "tiled: 16x16 tiles, overlap 4 px, wrapped (seamless)" in entries[0]
            assert "size must be" in entries[1] and "seed 11" in entries[2]
            assert page.locator("#studio-history section").nth(2).locator("img").count() == 1
            assert len(entries) == before + 3
            tiled = sorted(studio["out"].glob("*-a-browser-test/11.png"))[-1]
            assert read_record(tiled)["params"]["tiles"] == {"tile": [16, 16], "overlap": 4, "wrap": True}
            assert pixels(tiled).shape == (16, 32, 3)

            # The copy button copies the command shown, which renders the same pixels from any folder.
            page.locator("#studio-history section").first.locator(".cmd button").click()
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == page.locator("#studio-history section").first.locator(".cmd pre").inner_text()
            assert "\n" not in copied and "--wrap" in copied and "--tile 16" in copied

            # The gallery of the output folder opens from the page.
            link = page.get_attribute("#studio-header a", "href")
            gallery = page.request.get(studio["url"].rstrip("/") + link)
            assert gallery.ok and "text/html" in gallery.headers["content-type"] and "a browser test" in gallery.text()
        finally:
            browser.close()
    cmd = shlex.split(copied)
    assert cmd[0] == "xurdif-sample" and cmd[-2:] == ["-o", "rerender"]
    monkeypatch.chdir(tmp_path)
    assert sample_main(cmd[1:] + ["--no-progress"]) == 0
    again = next((tmp_path / "rerender").glob("*/11.png"))
    assert np.array_equal(pixels(again), pixels(tiled))


def test_stop_ends_the_render_in_the_background(studio, tmp_path):
    """Stop (here a client's cancel, as the page's Stop button does) stops the sampler at its
    next step: nothing of the batch is written, the history says "stopped", and the next
    render runs at once (uncancelled, the long render takes minutes)."""
    from gradio_client import Client

    client = Client(studio["url"], verbose=False, download_files=str(tmp_path / "dl"))
    model = str(studio["models"] / "eps-run" / "model.safetensors")
    # 24 px (no tiling, 2.25x the pixels): a batch takes tens of seconds even on a fast idle machine.
    job = client.submit(*form(model, prompt="a long render", n=64, steps=1000, size="24", post=""),
                        api_name="/render")
    deadline = time.time() + 60
    running = ("PROCESSING", "PROGRESS")  # PROGRESS: the render's progress bar is up
    while job.status().code.name not in running and time.time() < deadline:
        time.sleep(0.2)
    assert job.status().code.name in running
    time.sleep(3)  # loading the model, then sampling the first batch
    job.cancel()
    stopped_at = time.time()
    gallery, message, history = client.predict(*form(model, prompt="after the stop"), api_name="/render")
    assert time.time() - stopped_at < 60, "the stopped render went on in the background"
    assert len(gallery) == 1 and message.startswith("Saved 1 image(s)")
    first, second = history.split("<section")[1:3]
    assert "after the stop" in first and 'class="studio-entry stopped"' in second and "a long render" in second
    assert "Stopped: the render was stopped; 0 image(s) of it were finished and kept." in second
    assert "Traceback" not in history and "Error" not in second
    time.sleep(3)
    folder = next(studio["out"].glob("*-a-long-render"), None)
    assert folder is None or not list(folder.glob("*.png"))
    assert "Traceback" not in (studio["tmp"] / "server.log").read_text()


def test_rerender_command_has_absolute_paths_with_a_relative_init(tmp_path, monkeypatch):
    """The command shown for an image rendered from a relative init path works from any folder."""
    from xurdif.studio_render import history_entry, render_once

    model = save_tiny_model(tmp_path / "models" / "m" / "model.safetensors")
    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        work / "images" / "init.png")
    monkeypatch.chdir(work)
    job_args = dict(prompt="from an init", n=1, seed="5", sampler="ddim", spacing="auto", steps=4, size="",
                    init="images/init.png", strength=0.5, eta=0.0, noise_mult=1.0, post="", tile="auto",
                    overlap=None, wrap=False)
    images, text, records = render_once(str(model), Path("out"), "cpu", job_args, {}, progress=False)
    assert text.startswith("Saved 1 image(s)"), text
    entry = history_entry(1, "from an init", text, records)
    cmd = shlex.split(entry.split("<pre><code>")[1].split("</code>")[0].replace("&#x27;", "'").replace("&quot;", '"'))
    assert cmd[cmd.index("--init") + 1] == str(work / "images" / "init.png")
    assert Path(cmd[1]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert sample_main(cmd[1:] + ["--no-progress"]) == 0
    assert np.array_equal(pixels(next((elsewhere / "rerender").glob("*/5.png"))), pixels(Path(images[0][0]) if
                          Path(images[0][0]).is_absolute() else work / images[0][0]))


def test_sigma_min_from_the_page_is_recorded_and_checked(studio, tmp_path):
    from gradio_client import Client

    client = Client(studio["url"], verbose=False, download_files=str(tmp_path / "dl"))
    model = str(studio["models"] / "x0-run" / "model.safetensors")
    args = dict(prompt="an ending", sampler="dpmpp_3m", spacing="logsnr", steps=4, post="")
    gallery, message, _ = client.predict(*form(model, **args, sigma_min="0.2"), api_name="/render")
    assert len(gallery) == 1, message
    saved = next((studio["out"]).glob("*-an-ending/7.png"))
    assert read_record(saved)["params"]["sigma_min"] == 0.2
    gallery, message, _ = client.predict(*form(model, **{**args, "spacing": "uniform"}, sigma_min="0.1"),
                                         api_name="/render")
    assert gallery == [] and message == ("Error: sigma_min applies to logsnr and karras spacing, not 'uniform'; "
                                         "set it to 0 or change the spacing")
