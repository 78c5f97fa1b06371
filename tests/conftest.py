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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The test networks are tiny: a second OpenMP thread mostly spins, and on a
    # shared machine it made convolutions 4-25x slower. Subprocesses are unaffected.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    # The trainer's evaluation and the model hashes cache under $XDG_CACHE_HOME: tests write
    # there, not into the user's ~/.cache (a test that needs its own sets it again).
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
