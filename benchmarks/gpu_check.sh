#!/usr/bin/env bash
# The GPU check, unattended in under 10 minutes on one CUDA GPU (docs/benchmarks.md, "GPU check"):
#   1. the model and backend tests with CUDA visible (predictors that do not pin the CPU run on the GPU),
#   2. the runtime table on CUDA: starter and ViT-B 448, fp32 / bf16 / fp16, each runtime, with peak memory,
#   3. a short fine-tuning run (the backend job's steps) on CUDA, fp32 and bf16 autocast.
# Each part has its own time limit and its output goes to $OUT_DIR (default results/gpu_check). Without CUDA it says
# so and runs the CPU side of part 2 once, briefly, so that the script itself is known to work.
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-results/gpu_check}
mkdir -p "$OUT_DIR"
status=0

run() {  # run NAME SECONDS COMMAND...: time-limited, output to the terminal and $OUT_DIR/NAME.txt
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds} s): $*"
    timeout "$seconds" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "== $name: stopped at its ${seconds} s limit"
    [ "$rc" -ne 0 ] && status=1
    return 0
}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False); the GPU checks need one."
    echo "gpu_check: running only the CPU side of the runtime table (starter, fp32), to show that the script works."
    run runtimes_cpu_smoke 300 "$PYTHON" benchmarks/runtimes.py --models starter --device cpu --dtypes fp32 \
        --runtimes fast --repeats 1 --robot-clicks 0 --threads 2
    exit "$status"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
run tests 240 "$PYTHON" -m pytest -q -m "not slow" tests/test_model_parity.py tests/test_predictor.py \
    tests/test_refine.py tests/test_runtime.py tests/test_deformable_sampler.py tests/test_vit_attention.py \
    tests/test_backend_unit.py tests/test_backend_http.py
run runtimes 180 "$PYTHON" benchmarks/runtimes.py --models starter,vit_b_448 --device cuda --dtypes fp32,bf16,fp16 \
    --repeats 10
run finetune_step 120 "$PYTHON" benchmarks/finetune_step.py --device cuda --amp fp32,bf16 --steps 12 --warmup 2
echo "gpu_check: done (exit $status); outputs in $OUT_DIR"
exit "$status"
