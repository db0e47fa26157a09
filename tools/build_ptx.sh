#!/usr/bin/env bash
# Builds the GPU kernels: ptx/kernels.fatbin (sm_80 and sm_90a SASS plus compute_80 PTX, for newer GPUs)
# and ptx/resources.txt (the ptxas report: registers, shared memory, stack and spills per kernel), with
# the pinned nvcc 13.0 from PyPI installed into a local virtual environment (.venv-nvcc/).
#
#   tools/build_ptx.sh           rebuild ptx/
#   tools/build_ptx.sh --check   rebuild into a scratch folder; fail if it differs from ptx/ or if any
#                                kernel spills registers (what CI runs)
#
# Input: every cuda/*.cu, plus the helper checks of cuda/tests/ (not the emulator's planted-bug kernels),
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

check=0
[ "${1:-}" = "--check" ] && check=1
build=target/ptx-build
rm -rf "$build" && mkdir -p "$build/out"

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

# Keep the resource lines only (kernel, architecture, registers, smem, stack, spills).
# (Compile times vary between runs and are dropped.)
grep -E "ptxas info|bytes stack frame" "$build/out/ptxas.log" | grep -v "Compile time" | sed -E 's/^ +//' \
    > "$build/out/resources.txt"

spills=$(grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$build/out/resources.txt" || true)
if [ -n "$spills" ]; then
    echo "register spills (see $build/out/resources.txt):" >&2
    echo "$spills" >&2
    exit 1
fi
if grep -q "warning" "$build/out/ptxas.log"; then
    cat "$build/out/ptxas.log" >&2
    echo "nvcc/ptxas printed warnings" >&2
    exit 1
fi

if [ $check = 1 ]; then
    for f in kernels.fatbin resources.txt; do
        if ! cmp -s "$build/out/$f" "ptx/$f"; then
            echo "ptx/$f differs from a fresh build: run tools/build_ptx.sh and commit ptx/" >&2
            exit 1
        fi
    done
    echo "ptx/ is up to date; no kernel spills"
else
    mkdir -p ptx
    cp "$build/out/kernels.fatbin" "$build/out/resources.txt" ptx/
    echo "wrote ptx/kernels.fatbin ($(stat -c %s ptx/kernels.fatbin) bytes) and ptx/resources.txt"
fi
