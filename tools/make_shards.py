"""Write an image folder as webdataset tar shards: see `python tools/make_shards.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.data.make_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
