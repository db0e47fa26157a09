#!/usr/bin/env bash
# Tokenizer comparison against tiktoken and rustbpe (not part of CI).
#   bench/tokenizer/run.sh check               split / merges / ids equal to the references
#   bench/tokenizer/run.sh bench [--text F..]  encode MB/s and training time, side by side
#   bench/tokenizer/run.sh fixtures            regenerate tests/fixtures/tokenizer
# The references are installed from PyPI into a local virtual environment (.venv, or $VENV).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import tiktoken, rustbpe, regex" 2>/dev/null ||
    "$VENV/bin/pip" install --quiet tiktoken rustbpe regex
cargo build --release --quiet --bin tok_train --bin tok_eval
exec "$VENV/bin/python" bench/tokenizer/compare.py "$@"
