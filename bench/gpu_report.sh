#!/usr/bin/env bash
# The GPU self-check and every GPU benchmark in one go, one log per step and a summary line each:
#
#   bench/gpu_report.sh [BIN_DIR] [OUT_DIR]      (defaults: target/release, gpu-report)
#
# Build the binaries on any x86-64 machine (`cargo build --release`; both kernel builds are embedded) and
# run this from the repository root on the GPU machine (the parity step reads tests/fixtures/).
#
# Run order (the cheap checks first, so that a broken setup costs seconds, not the GPU's minutes):
#   1. driver          nvidia-smi: GPU name, driver version, compute capability (nvidia-smi.txt), and
#                      where libcuda and libcublasLt were found (libraries.txt)
#   2. selfcheck_debug kernel_bench --selfcheck with NANOCHAT_CUDA_DEBUG=1: a synchronisation after every
#                      launch and GEMM, so that a fault names its kernel, grid and shapes
#   3. selfcheck_cu12  the same with the CUDA 12 kernel build forced (NANOCHAT_CUDA_FATBIN=cu12), when the
#                      driver supports it
#   4. kernel_bench, attention_bench, model_ops_bench
#   5. parity          tests/fixtures/nanochat-ref-a on --device cuda
#   6. step_d12, step_d26   step_bench at depths 12 and 26 with a small batch (STEP_BATCH, default 4)
#   7. decode_bench    the decode kernels' checks and timings
#   8. infer_d12       infer_bench on random weights of depth 12: prefill tok/s and MFU, decode TPOT, tok/s
#                      and MBU at batch 1, 8, 32, 128, the batch-1 ceiling, one JSON line at the end
# Every step ends with one line in summary.txt. Without a GPU (no nvidia-smi, no GPU listed, or no
# libcuda) every step says "no GPU" and the script exits 0 at once.
#
# Libraries: libcuda comes with the driver; cuBLASLt is looked for on LD_LIBRARY_PATH, in the system's
# library folders and CUDA toolkits (/usr/local/cuda*/lib64 ...) and in the NVIDIA wheels of a Python
# environment; the folders where it is found are added to LD_LIBRARY_PATH. STEP_TIMEOUT (seconds, default
# 300) bounds each step; NVIDIA_SMI names the nvidia-smi to run.
set -u
BIN=${1:-target/release}
OUT=${2:-gpu-report}
SMI=${NVIDIA_SMI:-nvidia-smi}
STEPS="driver selfcheck_debug selfcheck_cu12 kernel_bench attention_bench model_ops_bench parity step_d12 step_d26 decode_bench infer_d12"
mkdir -p "$OUT"
: > "$OUT/summary.txt"

say() { echo "$*" | tee -a "$OUT/summary.txt"; }

# Folders that may hold the CUDA libraries, in the order the dynamic loader would be told of them.
candidate_dirs() {
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && echo "$d"; done
    unset IFS
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/nvidia/lib64 /usr/lib/wsl/lib \
        /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
        /usr/local/cuda-*/targets/x86_64-linux/lib /opt/cuda/lib64; do
        [ -d "$d" ] && echo "$d"
    done
    if command -v python3 >/dev/null && python3 -c "import nvidia" 2>/dev/null; then
        python3 -c "import nvidia, os; [print(os.path.join(p, d, 'lib')) for p in nvidia.__path__ for d in sorted(os.listdir(p))]" 2>/dev/null
    fi
}

# "path" lines for every copy of library $1 (a file name prefix) found, ldconfig's cache included.
find_lib() {
    {
        if command -v ldconfig >/dev/null; then
            ldconfig -p 2>/dev/null | awk -v n="$1" '$1 ~ "^"n {print $NF}'
        fi
        candidate_dirs | while read -r d; do
            ls "$d/$1"* 2>/dev/null
        done
    } | awk '!seen[$0]++'
}

{
    echo "libcuda:"
    find_lib libcuda.so | sed 's/^/  /'
    echo "libcublasLt:"
    find_lib libcublasLt.so | sed 's/^/  /'
} > "$OUT/libraries.txt"
# Make every folder holding cuBLASLt visible to the loader (the first one found wins).
for f in $(find_lib libcublasLt.so); do
    d=$(dirname "$f")
    case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d" ;; esac
done
export LD_LIBRARY_PATH

# 1. The driver.
no_gpu=""
if ! command -v "$SMI" >/dev/null 2>&1; then
    no_gpu="nvidia-smi not found"
    echo "$no_gpu" > "$OUT/nvidia-smi.txt"
else
    {
        timeout 60 "$SMI" --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
        echo
        timeout 60 "$SMI" 2>&1
    } > "$OUT/nvidia-smi.txt"
    if ! timeout 60 "$SMI" -L 2>/dev/null | grep -q "^GPU "; then
        no_gpu="nvidia-smi lists no GPU"
    fi
fi
if [ -z "$no_gpu" ] && ! grep -q "^  " <(sed -n '/^libcuda:/,/^libcublasLt:/p' "$OUT/libraries.txt"); then
    no_gpu="libcuda.so not found"
fi
if [ -n "$no_gpu" ]; then
    for s in $STEPS; do say "$s: no GPU ($no_gpu): skipped"; done
    say "no GPU on this machine: nothing run (see $OUT/nvidia-smi.txt, $OUT/libraries.txt)"
    exit 0
fi
say "driver: ok: $(sed -n 2p "$OUT/nvidia-smi.txt")"
driver_major=$(sed -n 2p "$OUT/nvidia-smi.txt" | awk -F', ' '{split($2, v, "."); print v[1]}')

step() {
    local name=$1
    shift
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-300}" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local what="exit $rc"
    [ $rc = 124 ] && what="timed out after ${STEP_TIMEOUT:-300} s"
    say "$name: $what in $((SECONDS - t0)) s ($*)"
}

# 2-3. Self-checks, the first with a synchronisation after every launch and GEMM.
step selfcheck_debug env NANOCHAT_CUDA_DEBUG=1 "$BIN/kernel_bench" --selfcheck
# Hopper+ drivers of CUDA 12.x are 525-579; 580+ (CUDA 13) loads the CUDA 12 build too.
if [ -n "$driver_major" ] && [ "$driver_major" -ge 525 ] 2>/dev/null; then
    step selfcheck_cu12 env NANOCHAT_CUDA_FATBIN=cu12 "$BIN/kernel_bench" --selfcheck
else
    say "selfcheck_cu12: skipped (driver ${driver_major:-unknown} is older than 525)"
fi
# 4. Kernel benchmarks.
step kernel_bench "$BIN/kernel_bench"
step attention_bench "$BIN/attention_bench"
step model_ops_bench "$BIN/model_ops_bench"
# 5. Parity with the reference fixture on the GPU.
step parity "$BIN/parity" tests/fixtures/nanochat-ref-a --device cuda
# 6. Whole training steps, small batches.
step step_d12 "$BIN/step_bench" --depth 12 --batch "${STEP_BATCH:-4}" --steps 5
step step_d26 "$BIN/step_bench" --depth 26 --batch "${STEP_BATCH:-4}" --steps 5
grep -h "mean over" "$OUT"/step_d*.log 2>/dev/null | tee -a "$OUT/summary.txt"
# 7-8. Inference: the decode kernels, then KV-cached prefill and decode at depth 12.
step decode_bench "$BIN/decode_bench" --device cuda
step infer_d12 "$BIN/infer_bench" --device cuda --depth 12
tail -n 1 "$OUT/infer_d12.log" 2>/dev/null | grep "^{" | tee -a "$OUT/summary.txt"
exit 0
