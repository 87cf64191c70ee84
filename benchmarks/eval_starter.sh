#!/usr/bin/env bash
# NoC@85/90 of a checkpoint on GrabCut and Berkeley (the evaluation-only sets) with the standard
# robot-click protocol (zoom-in + flip TTA, 20 clicks, stop at IoU 0.90).
#
#   benchmarks/eval_starter.sh [CHECKPOINT] [OUT_DIR] [extra `adaptiveclick evaluate` flags...]
#
# CHECKPOINT defaults to the running starter training's latest weights (runs/starter/model_last.safetensors,
# rewritten atomically at every checkpoint, so it is safe to read while training runs). Results go to
# OUT_DIR/results.json (+ plot); the table is printed. Add e.g. `--limit 20` for a quick look.
# On a shared CPU, THREADS (default 1) limits the evaluation's torch threads.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT="${1:-runs/starter/model_last.safetensors}"
OUT="${2:-results/starter_$(date +%Y%m%d_%H%M%S)}"
shift $(( $# > 2 ? 2 : $# )) || true
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -f "$CHECKPOINT" ]; then
    echo "checkpoint not found: $CHECKPOINT" >&2
    exit 2
fi
echo "evaluating $CHECKPOINT -> $OUT"
OMP_NUM_THREADS="${THREADS:-1}" exec "$PYTHON" -c '
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from cli import main
sys.exit(main(["evaluate", *sys.argv[2:]]))
' "${THREADS:-1}" --checkpoint "$CHECKPOINT" --datasets GrabCut,Berkeley --device cpu --out "$OUT" "$@"
