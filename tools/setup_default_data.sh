#!/usr/bin/env bash
# Offline default data: install English text packages from Debian, build the default corpus
# (parquet, in $NANOCHAT_BASE_DIR/base_data_default), train the tokenizer on it if there is none,
# and tokenize the corpus into token shards. Needs only the Debian package mirror.
#
# Usage: tools/setup_default_data.sh            (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses bible-kjv bible-kjv-text dict-jargon dict-devil"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=""
for p in $PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup_default_data: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

cargo build --release --bin download_data --bin tok_train --bin tokenize_data
./target/release/download_data --default-corpus
BASE="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
if [ ! -f "$BASE/tokenizer/tokenizer.bin" ]; then
    ./target/release/tok_train
fi
./target/release/tokenize_data --overwrite
