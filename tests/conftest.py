import os
import sys
from pathlib import Path

import pytest

# Nothing may be fetched at test time; set before any HF library is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "emoji-faces-32"


@pytest.fixture
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture
def root() -> Path:
    return ROOT
