"""Write an image folder as webdataset tar shards: see `python tools/make_shards.py --help`."""
import sys

from xurdif.data.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
