#!/usr/bin/env bash
# Set up (if needed), train the bundled demo recipe on CPU, then render a prompt list.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/python launch.py recipes/demo.yaml "$@"
.venv/bin/python tools/sample.py runs/demo prompts/demo.txt -o out/demo  # the model's default sampler
