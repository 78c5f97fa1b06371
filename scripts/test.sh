#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# -rs: skipped tests (the browser test without Chromium) are listed with their reason.
exec .venv/bin/python -m pytest -q -rs "$@"
