#!/usr/bin/env bash
# Builds the GPU kernels, twice, from the same sources:
# - ptx/kernels.fatbin (sm_80 and sm_90a SASS plus compute_80 PTX, for newer GPUs) and ptx/resources.txt
#   (the ptxas report: registers, shared memory, stack and spills per kernel), with the pinned nvcc 13.0
#   from PyPI installed into a local virtual environment (.venv-nvcc/): for drivers of CUDA 13.0 or newer;
# - ptx/kernels_cu12.fatbin and ptx/resources_cu12.txt, the same targets built with the pinned CUDA 12.9
#   compiler wheels (NVRTC, ptxas, nvfatbin; .venv-nvcc12/, see tools/build_fatbin12.py): for drivers of
#   CUDA 12.x. The program picks one at start-up from the driver's version (src/device/cuda.rs).
#
#   tools/build_ptx.sh           rebuild ptx/
#   tools/build_ptx.sh --check   rebuild into a scratch folder; fail if it differs from ptx/ or if any
#                                kernel spills registers (what CI runs)
#
# Input: every cuda/*.cu, plus the helper checks of cuda/tests/ (not the emulator's planted-bug and profiler kernels),
# compiled as one translation unit so that the fatbin is one module.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NVCC_VENV:-.venv-nvcc}
PINNED="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
nvcc_path() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }
if [ -z "$(nvcc_path)" ]; then
    echo "installing the pinned nvcc wheels into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet $PINNED
fi
NVCC="$(cd "$(dirname "$(nvcc_path)")" && pwd)/nvcc"  # called by absolute path: a symlinked nvcc does not find its tools

VENV12=${NVCC12_VENV:-.venv-nvcc12}
PINNED12="nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-nvcc-cu12==12.9.86 nvidia-nvfatbin-cu12==12.9.82 nvidia-cuda-runtime-cu12==12.9.79"
site12() { ls -d "$VENV12"/lib/python3*/site-packages 2>/dev/null | head -n1; }
if [ -z "$(site12)" ] || [ ! -e "$(site12)/nvidia/nvfatbin/lib/libnvfatbin.so.12" ]; then
    echo "installing the pinned CUDA 12 compiler wheels into $VENV12" >&2
    python3 -m venv "$VENV12"
    "$VENV12/bin/pip" install --quiet $PINNED12
fi
SITE12="$(cd "$(site12)" && pwd)"
PY12="$(cd "$VENV12/bin" && pwd)/python"

check=0
[ "${1:-}" = "--check" ] && check=1
build=target/ptx-build
rm -rf "$build" && mkdir -p "$build/out" "$build/out12"

# The unity file includes the sources by relative path, so the output does not depend on where the
# repository is checked out.
{
    for f in cuda/*.cu cuda/tests/ptx_check.cu cuda/tests/emu_selftest.cu; do
        [ -e "$f" ] && echo "#include \"../../$f\""
    done
} > "$build/kernels.cu"

(
    cd "$build"
    "$NVCC" -fatbin -O3 -std=c++17 -I../../cuda \
        -gencode arch=compute_80,code=sm_80 \
        -gencode arch=compute_90a,code=sm_90a \
        -gencode arch=compute_80,code=compute_80 \
        -Xptxas -v,-warn-spills \
        -o out/kernels.fatbin kernels.cu 2> out/ptxas.log
) || { cat "$build/out/ptxas.log" >&2; exit 1; }

(
    cd "$build"
    "$PY12" ../../tools/build_fatbin12.py "$SITE12" kernels.cu out12
) || exit 1
mv "$build/out12/kernels.fatbin" "$build/out/kernels_cu12.fatbin"
mv "$build/out12/ptxas.log" "$build/out/ptxas_cu12.log"

# Keep the resource lines only (kernel, architecture, registers, smem, stack, spills).
# (Compile times vary between runs and are dropped.)
for v in "" _cu12; do
    grep -E "ptxas info|bytes stack frame" "$build/out/ptxas$v.log" | grep -v "Compile time" | sed -E 's/^ +//' \
        > "$build/out/resources$v.txt"
    spills=$(grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$build/out/resources$v.txt" || true)
    if [ -n "$spills" ]; then
        echo "register spills (see $build/out/resources$v.txt):" >&2
        echo "$spills" >&2
        exit 1
    fi
    if grep -q "warning" "$build/out/ptxas$v.log"; then
        cat "$build/out/ptxas$v.log" >&2
        echo "nvcc/ptxas printed warnings" >&2
        exit 1
    fi
done

outputs="kernels.fatbin resources.txt kernels_cu12.fatbin resources_cu12.txt"
if [ $check = 1 ]; then
    for f in $outputs; do
        if ! cmp -s "$build/out/$f" "ptx/$f"; then
            echo "ptx/$f differs from a fresh build: run tools/build_ptx.sh and commit ptx/" >&2
            exit 1
        fi
    done
    echo "ptx/ is up to date (CUDA 13 and CUDA 12 fatbins); no kernel spills"
else
    mkdir -p ptx
    for f in $outputs; do cp "$build/out/$f" ptx/; done
    echo "wrote ptx/kernels.fatbin ($(stat -c %s ptx/kernels.fatbin) bytes), ptx/kernels_cu12.fatbin" \
        "($(stat -c %s ptx/kernels_cu12.fatbin) bytes) and their resources*.txt"
fi
