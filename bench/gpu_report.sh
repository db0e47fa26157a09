#!/usr/bin/env bash
# The GPU self-check and every GPU benchmark in one go, one log per step and a summary line each:
#
#   bench/gpu_report.sh [BIN_DIR] [OUT_DIR]      (defaults: target/release, gpu-report)
#
# Build the binaries on any x86-64 machine (`cargo build --release`; the kernels are embedded) and run this
# from the repository root on the GPU machine (the parity step reads tests/fixtures/). cuBLASLt is found on
# LD_LIBRARY_PATH, or in the NVIDIA wheels of a Python environment if there is one. STEP_TIMEOUT (seconds,
# default 300) bounds each step.
set -u
BIN=${1:-target/release}
OUT=${2:-gpu-report}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

if python3 -c "import nvidia" 2>/dev/null; then
    for lib in $(python3 -c "import nvidia, os; [print(os.path.join(p, d, 'lib')) for p in nvidia.__path__ for d in sorted(os.listdir(p))]"); do
        [ -d "$lib" ] && LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
    done
    export LD_LIBRARY_PATH
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$OUT/nvidia-smi.txt"

step() {
    local name=$1
    shift
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-300}" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s ($*)" | tee -a "$OUT/summary.txt"
}

step selfcheck "$BIN/kernel_bench" --selfcheck
step kernel_bench "$BIN/kernel_bench"
step attention_bench "$BIN/attention_bench"
step model_ops_bench "$BIN/model_ops_bench"
step parity "$BIN/parity" tests/fixtures/nanochat-ref-a --device cuda
step step_d12 "$BIN/step_bench" --depth 12
step step_d20 "$BIN/step_bench" --depth 20
grep -h "mean over" "$OUT"/step_d*.log 2>/dev/null | tee -a "$OUT/summary.txt"
