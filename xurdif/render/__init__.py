"""Batch rendering: job lists (jobs.py), output folder (outputs.py), the
rendering loop (run.py) and the xurdif-sample command (cli.py)."""
