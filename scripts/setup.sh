#!/usr/bin/env bash
# Create .venv and install xurdif with everything it needs. Idempotent: a second
# run with unchanged setup.cfg finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xurdif-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and pinned: this machine's pip finds these on local disk; any
  # other torch spec would download several GB.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e ".[test,studio]"
  echo "$want" > "$stamp"
fi
