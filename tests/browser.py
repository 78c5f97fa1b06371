"""Headless Chromium for the browser tests (playwright driving the system's Chromium)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("XURDIF_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling out to a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(p):
    """A persistent headless context, or a skip (with a line in the output) without Chromium."""
    if not Path(CHROMIUM).exists():
        print(f"SKIPPED browser test: {CHROMIUM} not installed (apt-get install chromium)")
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    return p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="xurdif-chromium-"), executable_path=CHROMIUM,
                                                args=CHROMIUM_FLAGS, headless=True)
