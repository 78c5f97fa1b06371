"""The model library: one self-contained HTML page listing every model file under a folder
(its last grid, data, length, quality, lineage and render command), and the model card
(README.md) written beside each run's exported model."""
from .entries import Entry, scan
from .page import LIBRARY, library_html, write_library

__all__ = ["Entry", "LIBRARY", "library_html", "scan", "write_library"]
