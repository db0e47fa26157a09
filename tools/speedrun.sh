#!/usr/bin/env bash
# The whole pipeline in one command (upstream runs/speedrun.sh): data, tokenizer, pretraining, CORE, the chat
# stages, their evaluation and the report card, on one GPU node.
#
#   tools/speedrun.sh [--depth 24] [--gpus 8] [--gpu-hour-cost 3.00]
#   tools/speedrun.sh --dry-run          every stage on the offline default corpus, a tiny model on the CPU
#
# Stages: build, download (ClimbMix shards, the chat tasks, the CORE eval bundle), tok_train, tokenize_data,
# train_gpt, base_eval (CORE, bits per byte, samples), mid_train, chat_sft, chat_eval, chat_rl (when this
# build has it), report. Everything lands under $NANOCHAT_BASE_DIR (default ~/.cache/nanochat; for --dry-run
# ~/.cache/nanochat-dryrun). The script is idempotent: a stage that finished leaves a marker in
# $NANOCHAT_BASE_DIR/report/stages/ and is skipped next time (delete the marker to redo it); pretraining and
# the chat stages resume from their latest checkpoint when they were interrupted.
#
# Options:
#   --depth N          model depth (default 24; 26 is upstream's other GPT-2-grade size)
#   --gpus N           GPUs of the node (default 8): pretraining and base_eval run one rank per GPU
#   --gpu-hour-cost X  dollars per GPU-hour for the report's cost line (default 3.00, an H100)
#   --dry-run          the offline default corpus, a depth-2 model on the CPU, a few steps per stage
#   --bin-dir DIR      use the programs in DIR instead of building a release (e.g. target/debug)
#   --expect-done      fail if any stage still had to run (checks that a finished run is skipped entirely)
set -euo pipefail
cd "$(dirname "$0")/.."

depth=24
gpus=8
rate=3.00
dry=0
bin=""
expect_done=0
while [ $# -gt 0 ]; do
    case "$1" in
        --depth) depth="$2"; shift 2 ;;
        --gpus) gpus="$2"; shift 2 ;;
        --gpu-hour-cost) rate="$2"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --bin-dir) bin="$2"; shift 2 ;;
        --expect-done) expect_done=1; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "speedrun: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$depth" in ''|*[!0-9]*) echo "speedrun: --depth must be a number" >&2; exit 2 ;; esac
case "$gpus" in ''|*[!0-9]*|0) echo "speedrun: --gpus must be a positive number" >&2; exit 2 ;; esac

if [ "$dry" = 1 ]; then
    export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat-dryrun}"
else
    export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
fi
BASE="$NANOCHAT_BASE_DIR"
MARKS="$BASE/report/stages"
mkdir -p "$MARKS"
export OMP_NUM_THREADS=1
start=$(date +%s)
ran=0
skipped=0

# stage NAME COMMAND...: runs COMMAND unless NAME finished before; marks it done when it succeeds.
stage() {
    local name="$1"
    shift
    if [ -f "$MARKS/$name" ]; then
        echo "== $name: done already (delete $MARKS/$name to run it again)"
        skipped=$((skipped + 1))
        return 0
    fi
    if [ "$expect_done" = 1 ]; then
        echo "speedrun: stage $name has not finished, but --expect-done was given" >&2
        exit 1
    fi
    echo
    echo "== [$(( $(date +%s) - start ))s] $name: $*"
    "$@"
    date -u +%FT%TZ > "$MARKS/$name"
    ran=$((ran + 1))
}

# ranks N COMMAND...: N ranks of COMMAND on this node, one GPU each (rank r on GPU r).
ranks() {
    local n="$1"
    shift
    if [ "$n" = 1 ]; then
        "$@"
        return
    fi
    local pids=() r
    for r in $(seq 0 $((n - 1))); do
        RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 CUDA_VISIBLE_DEVICES=$r \
            "$@" &
        pids+=($!)
    done
    local failed=0 p
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    return $failed
}

if [ -z "$bin" ]; then
    stage_build() { cargo build --release --bins; }
    bin=target/release
    # Always run: cargo is quick when nothing changed, and the programs must match the source.
    echo "== build (release)"
    stage_build
fi
for p in download_data tok_train tokenize_data train_gpt base_eval mid_train chat_sft chat_eval report; do
    [ -x "$bin/$p" ] || { echo "speedrun: $bin/$p is missing (build with cargo build --bins)" >&2; exit 1; }
done

# The wall clock of the report starts with the first run of the script.
if [ ! -f "$BASE/report/started.json" ]; then
    [ "$expect_done" = 1 ] && { echo "speedrun: no run has started in $BASE" >&2; exit 1; }
    "$bin/report" reset
fi

if [ "$dry" = 1 ]; then
    # The offline default corpus needs Debian's text packages (tools/setup_default_data.sh lists them).
    packages="wamerican fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses bible-kjv bible-kjv-text dict-jargon dict-devil"
    missing=""
    for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ] && [ "$expect_done" = 0 ]; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    stage download "$bin/download_data" --default-corpus
    # Offline chat tasks: the identity conversations (the spelling tasks read Debian's word list).
    stage download_tasks "$bin/download_data" --tasks --offline
    stage tok_train "$bin/tok_train" --vocab-size 1024 --max-chars 3000000
    stage tokenize_data "$bin/tokenize_data" --overwrite
    stage train_gpt "$bin/train_gpt" --device cpu --depth 2 --aspect-ratio 32 --head-dim 32 --max-seq-len 128 \
        --device-batch-size 4 --total-batch-size 1024 --num-iterations 16 --warmup-steps 2 --eval-every 8 \
        --eval-tokens 4096 --sample-every 0 --core-metric-every 0 --save-every 8 --model-tag d2 --resume
    # CORE runs when a bundle is present (download_data --eval-bundle needs the network).
    stage base_eval "$bin/base_eval" --model-tag d2 --device-batch-size 4 --split-tokens 4096
    stage mid_train "$bin/mid_train" --model-tag d2 --max-seq-len 128 --device-batch-size 4 \
        --total-batch-size 1024 --num-iterations 8 --eval-every 4 --eval-tokens 2048 --resume
    stage chat_sft "$bin/chat_sft" --model-tag d2 --num-iterations 8 --eval-every 4 --eval-tokens 2048 \
        --chatcore-every -1 --resume
    stage chat_eval "$bin/chat_eval" -i sft --model-tag d2 --task-name SpellingBee --max-problems 4 \
        --max-new-tokens 32
    if [ -x "$bin/chat_rl" ]; then
        stage chat_rl "$bin/chat_rl" --model-tag d2 --device cpu --task keyword --num-iterations 2 \
            --examples-per-step 2 --num-samples 4 --device-batch-size 4 --max-new-tokens 16 --eval-examples 4 --resume
        stage chat_eval_rl "$bin/chat_eval" -i rl --model-tag d2 --task-name SpellingBee --max-problems 4 \
            --max-new-tokens 32
    else
        echo "== chat_rl: not part of this build (no $bin/chat_rl); skipped"
    fi
    stage report "$bin/report" --model-tag d2 --gpus 1 --gpu-hour-cost "$rate"
else
    tag="d$depth"
    # 8 shards are enough for the tokenizer; the rest (upstream: 170 for d24) download meanwhile.
    stage download "$bin/download_data" -n 8
    stage download_tasks "$bin/download_data" --tasks
    stage download_eval_bundle "$bin/download_data" --eval-bundle
    shards=170
    [ "$depth" -ge 26 ] && shards=240
    if [ ! -f "$MARKS/download_all" ]; then
        "$bin/download_data" -n "$shards" > "$BASE/download_all.log" 2>&1 &
        download_pid=$!
    fi
    stage tok_train "$bin/tok_train"
    if [ -n "${download_pid:-}" ]; then
        echo "== waiting for the $shards shards (log: $BASE/download_all.log)"
        stage download_all wait "$download_pid"
    fi
    stage tokenize_data "$bin/tokenize_data"
    # upstream: --target-param-data-ratio 8 --device-batch-size 16 (and --fp8, not implemented here).
    stage train_gpt "$bin/train_gpt" --nproc-per-node "$gpus" --device cuda --depth "$depth" \
        --target-param-data-ratio 8 --device-batch-size 16 --save-every 1000 --resume
    stage base_eval ranks "$gpus" "$bin/base_eval" --device cuda --model-tag "$tag" --device-batch-size 16
    # The chat stages run on one GPU (their data parallelism is not part of this build).
    stage mid_train "$bin/mid_train" --device cuda --model-tag "$tag" --resume
    stage chat_sft "$bin/chat_sft" --device cuda --model-tag "$tag" --resume
    stage chat_eval "$bin/chat_eval" -i sft --device cuda --model-tag "$tag"
    if [ -x "$bin/chat_rl" ]; then
        stage chat_rl "$bin/chat_rl" --device cuda --model-tag "$tag" --resume
        stage chat_eval_rl "$bin/chat_eval" -i rl --device cuda --model-tag "$tag" --task-name GSM8K
    else
        echo "== chat_rl: not part of this build (no $bin/chat_rl); skipped"
    fi
    stage report "$bin/report" --model-tag "$tag" --gpus "$gpus" --gpu-hour-cost "$rate"
fi

echo
echo "speedrun: $ran stage(s) run, $skipped already done, in $(( $(date +%s) - start ))s; report: $BASE/report/report.md"
