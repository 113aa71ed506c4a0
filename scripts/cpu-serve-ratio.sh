#!/usr/bin/env bash
# Batching's gain on the CPU backend, as [serving] measures it: start `mllm serve` with the
# default model, warm it up with 16 requests, then run bench-serve (64 requests, inputs
# 64-256, outputs 32-128, seed 0) at concurrency 1 and 8 and print both output tok/s and their
# ratio. Compare builds by alternating them in one window: the machine's speed drifts.
#
#   scripts/cpu-serve-ratio.sh [path/to/mllm] [port]
set -euo pipefail
BIN=${1:-target/release/mllm}
PORT=${2:-30199}
LOG=$(mktemp)
"$BIN" serve --device cpu --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 300); do
    curl -sf "localhost:$PORT/health" >/dev/null && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 1
done
run() { # concurrency prompts seed -> output tok/s
    "$BIN" bench-serve --port "$PORT" --num-prompts "$2" --max-concurrency "$1" \
        --input-len-range 64:256 --output-len-range 32:128 --seed "$3" |
        awk '/Output token throughput/ {print $NF}'
}
run 8 16 1 >/dev/null
c1=$(run 1 64 0)
c8=$(run 8 64 0)
awk -v a="$c1" -v b="$c8" 'BEGIN { printf "conc 1: %s tok/s  conc 8: %s tok/s  ratio %.2fx\n", a, b, b / a }'
