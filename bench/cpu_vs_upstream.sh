#!/usr/bin/env bash
# The CPU training step of upstream nanochat (PyTorch) and of this project, on the same shapes, in one run.
#   NANOCHAT_UPSTREAM=/path/to/nanochat bench/cpu_vs_upstream.sh [ROUNDS]
# NANOCHAT_UPSTREAM is a checkout of karpathy/nanochat (the package directory nanochat/ inside it); PyTorch is
# installed from PyPI into a virtual environment ($VENV, default .venv-upstream). The two run one shape right
# after the other, ROUNDS times (default 2), alternating, and the best step of each is compared. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-2}"
UPSTREAM="${NANOCHAT_UPSTREAM:-}"
if [ -z "$UPSTREAM" ] || [ ! -f "$UPSTREAM/nanochat/gpt.py" ]; then
    echo "skipped: set NANOCHAT_UPSTREAM to a checkout of karpathy/nanochat (the directory holding nanochat/gpt.py)"
    exit 0
fi
VENV="${VENV:-.venv-upstream}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch, numpy" 2>/dev/null; then
    if ! "$VENV/bin/pip" install --quiet torch numpy; then
        echo "skipped: could not install torch and numpy from PyPI into $VENV"
        exit 0
    fi
fi
OURS=$(cargo bench --bench cpu_model --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*cpu_model[^"]*\)".*/\1/p' | tail -1)
# Shapes: layers, width, heads, vocab, T, B. The first is the quickstart's model, the second upstream's runcpu.sh.
SHAPES=("4 256 4 8192 256 8" "6 384 6 32768 512 4")
printf '%-32s %14s %14s %7s\n' "shape (L C H V T B)" "upstream tok/s" "this tok/s" "ratio"
for shape in "${SHAPES[@]}"; do
    up=0
    ours=0
    for _ in $(seq "$ROUNDS"); do
        u=$(PYTHONPATH="$UPSTREAM" "$VENV/bin/python" bench/cpu_vs_upstream.py $shape | awk '/^upstream/ {print $3}')
        o=$("$OURS" --shape "${shape// /,}" | awk '/^this tok\/s/ {print $3}')
        up=$(python3 -c "print(max($up, $u))")
        ours=$(python3 -c "print(max($ours, $o))")
    done
    printf '%-32s %14.0f %14.0f %7.2f\n' "$shape" "$up" "$ours" "$(python3 -c "print($ours / $up)")"
done
