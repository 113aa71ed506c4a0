#!/usr/bin/env bash
# GPU tests and benchmarks in one device call.
#
#   bash scripts/gpu-test.sh build   # here (has cargo): builds release test
#                                    # binaries + CLI, prebuilds the sm_90a
#                                    # kernel cache, packs headers into .gpu/
#   bash scripts/gpu-test.sh run     # on the GPU machine (no cargo): runs
#                                    # every GPU test and benchmark, logs to $OUT
#
# With the device tool, one call does the second half:
#   run(command="bash scripts/gpu-test.sh run", carry=[".gpu"])
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
gpu="$root/.gpu"
archs=${MLLM_GPU_TEST_ARCHS:-sm_90a}

build() {
  cd "$root"
  [ -f .toolchain/env.sh ] || bash scripts/setup.sh
  # shellcheck disable=SC1091
  source .toolchain/env.sh
  rm -rf "$gpu" && mkdir -p "$gpu/bin" "$gpu/cache"
  cargo build --release --bin mllm-kernel
  cp target/release/mllm-kernel "$gpu/bin/"
  # Every test binary that can touch a GPU, by target name.
  cargo test --release --no-run --message-format=json --test gpu_ops --test gpu_int8_mm --test gpu_core_ops --test gpu_attention --test gpu_fused_quant --test gpu_sampling --test gpu_vision_ops --test gpu_stream_linear --test gpu_decode_mlp --test gpu_kernel_timeline 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$gpu/bin"
  # The same tests against the AOT build (kernels linked in, no cache used);
  # MLLM_GPU_TEST_AOT=0 skips them for a quicker iteration bundle.
  [ "${MLLM_GPU_TEST_AOT:-1}" = 0 ] || MLLM_CUDA_ARCHS="$(echo "$archs" | sed 's/sm_//g; s/ /;/g')" \
    cargo test --release --features aot --no-run --message-format=json --test gpu_ops --test gpu_int8_mm --test gpu_core_ops --test gpu_attention --test gpu_fused_quant --test gpu_sampling --test gpu_vision_ops --test gpu_stream_linear --test gpu_decode_mlp --test gpu_kernel_timeline 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/aot_" + m["target"]["name"])
' "$gpu/bin"
  # The engine on CUDA: its GPU test and the CLI for bench-one-batch.
  cargo build --release -p mllm-engine --bin mllm
  cp target/release/mllm "$gpu/bin/"
  cargo test --release -p mllm-engine --no-run --message-format=json --test gpu_engine --test gpu_qwen3_vl 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$gpu/bin"
  strip "$gpu"/bin/*
  # Prebuilt cache: the GPU machine then loads instead of compiling.
  for a in $archs; do
    MLLM_KERNEL_CACHE_DIR="$gpu/cache" "$gpu/bin/mllm-kernel" cache rebuild --arch "$a"
  done
  tar -C third_party -cJf "$gpu/headers.tar.xz" cutlass flashinfer
  # Binaries and cache compress ~4x; the device tool carries at most 64 MiB.
  tar -C "$gpu" -cJf "$gpu/bundle.tar.xz" bin cache && rm -rf "$gpu/bin" "$gpu/cache"
  du -sh "$gpu"
}

# Waits up to $2 (60) seconds for a server on localhost:$1 to answer /health.
wait_healthy() {
  for _ in $(seq $((2 * ${2:-60}))); do
    curl -sf "localhost:$1/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
}

# Runs test binary $2 (label $1) with the environment assignments that follow, into
# $out/tests.log; a failure sets status=1.
run_test() {
  local label=$1 bin=$2
  shift 2
  echo "== $label" | tee -a "$out/tests.log"
  env "$@" timeout "${MLLM_GPU_TEST_TIMEOUT:-900}" "$bin" --test-threads=1 --nocapture 2>&1 |
    tee -a "$out/tests.log" || status=1
}

# Starts `mllm serve --device cuda` on port $1 with the arguments after $3, logging to $2, and
# waits up to $3 seconds for it to answer /health; serve_pid is its pid.
start_server() {
  local port=$1 log=$2 wait=$3
  shift 3
  "$gpu/bin/mllm" serve --device cuda --port "$port" "$@" >>"$log" 2>&1 &
  serve_pid=$!
  wait_healthy "$port" "$wait"
}

stop_server() {
  kill "$serve_pid" 2>/dev/null
  wait "$serve_pid" 2>/dev/null || true
}

# Every GPU test: HF fixtures on the GPU, each test binary, `mllm serve` chats; uses run()'s
# variables (gpu, out, status).
gpu_tests() {
  # bf16 HF references of tiny random models for the engine's GPU test.
  parity=/tmp/mllm-gpu-parity
  rm -rf "$parity"
  python3 scripts/gen_parity_fixtures.py --gpu --out "$parity" 2>&1 | tail -n 5 | tee -a "$out/tests.log" || status=1
  export MLLM_GPU_PARITY_DIR=$parity
  # The same for Qwen3-VL (text heads of dim 64), plus the CPU fixture's tokenizer for serving.
  vl=/tmp/mllm-gpu-vl
  rm -rf "$vl"
  python3 scripts/fixtures/qwen3_vl_model.py --gpu --out "$vl" 2>&1 | tail -n 3 | tee -a "$out/tests.log" || status=1
  cp engine/tests/fixtures/qwen3_vl_model/tokenizer*.json "$vl"/ 2>/dev/null || true
  export MLLM_GPU_VL_DIR=$vl
  for t in "$gpu"/bin/*; do
    name=$(basename "$t")
    # MLLM_GPU_TEST_ONLY: a regex of test binaries to run (default: all).
    [[ "$name" =~ ${MLLM_GPU_TEST_ONLY:-.} ]] || continue
    case "$name" in
      mllm-kernel | mllm) continue ;;
      aot_*)
        # AOT: JIT off and an empty cache, so any cache use would fail.
        echo "== $name (MLLM_KERNEL_JIT=0, empty cache)" | tee -a "$out/tests.log"
        rm -rf /tmp/mllm-empty-cache
        MLLM_KERNEL_JIT=0 MLLM_KERNEL_CACHE_DIR=/tmp/mllm-empty-cache "$t" --test-threads=1 --nocapture 2>&1 |
          tee -a "$out/tests.log" || status=1
        ;;
      gpu_engine)
        run_test "$name" "$t"
        # Again on the split-KV decode kernel: its K/V requests run before the wait on the
        # KV-store kernel, which only the real decode chain (graphs on and off) exercises.
        # With cuBLAS for one-row bf16 linears (MLLM_LINEAR_SMALL_M=cublas) there too.
        run_test "$name (MLLM_DECODE_KERNEL=split-kv MLLM_LINEAR_SMALL_M=cublas)" "$t" \
          MLLM_DECODE_KERNEL=split-kv MLLM_LINEAR_SMALL_M=cublas
        # CUTLASS 2.x W8A8 GEMMs (gate_up at batch 2-16) behind an in-kernel wait, with PDL.
        run_test "$name (MLLM_INT8_MM_SM80_PDL=1)" "$t" MLLM_INT8_MM_SM80_PDL=1
        # W8A8 one-row steps on decode_mlp instead of the four MLP kernels.
        run_test "$name (MLLM_DECODE_MLP=on)" "$t" MLLM_DECODE_MLP=on
        # And on the bf16 streaming linear and stream_m16 for every decode GEMM, with every
        # L2 prefetch target in the chain (results must not change) and the cluster-merged
        # split-KV attention.
        run_test "$name (MLLM_LINEAR_SMALL_M=stream MLLM_INT8_MM_CONFIG=stream_m16 MLLM_L2_PREFETCH=.. MLLM_DECODE_KERNEL=split-kv-cluster)" "$t" \
          MLLM_LINEAR_SMALL_M=stream MLLM_INT8_MM_CONFIG=stream_m16 MLLM_L2_PREFETCH=o,gate_up:8,down:8 \
          MLLM_DECODE_KERNEL=split-kv-cluster
        ;;
      gpu_decode_mlp)
        run_test "$name" "$t"
        # Again on a two-stage ring: every slot is refilled as soon as it is released, the
        # producer and consumer warps' mbarrier phases wrap on every other stage.
        run_test "$name (MLLM_DECODE_MLP_STAGES=2)" "$t" MLLM_DECODE_MLP_STAGES=2
        ;;
      gpu_int8_mm)
        run_test "$name" "$t"
        # The CUTLASS 2.x configs again through their PDL entry (sm80.cuh).
        run_test "$name (MLLM_INT8_MM_SM80_PDL=1)" "$t" MLLM_INT8_MM_SM80_PDL=1
        # The swap-AB tiles without their weight prefetch (sm90.cuh).
        run_test "$name (MLLM_INT8_MM_SWAP_PREFETCH=0)" "$t" MLLM_INT8_MM_SWAP_PREFETCH=0
        # The K-folded swap-AB tiles at each fold, forced wherever it fits (sm90_fold.cuh).
        for f in 1 2 4; do
          run_test "$name folded (MLLM_INT8_MM_FOLD=$f)" "$t" MLLM_INT8_MM_FOLD=$f folded_swap_tiles
        done
        ;;
      *) run_test "$name" "$t" ;;
    esac
  done
  # `mllm serve --device cuda` answers a chat request on the tiny Qwen3.
  echo "== mllm serve --device cuda (tiny random Qwen3)" | tee -a "$out/tests.log"
  start_server 30123 "$out/serve.log" 60 --model "$parity/qwen3"
  if curl -sS localhost:30123/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"w5 w6 w7"}],"max_tokens":8,"temperature":0}' \
    -o "$out/serve_chat.json" && grep -q '"choices"' "$out/serve_chat.json"; then
    echo "serve chat: ok ($(cat "$out/serve_chat.json"))" | tee -a "$out/tests.log"
  else
    echo "serve chat: FAILED (see serve.log)" | tee -a "$out/tests.log"
    status=1
  fi
  stop_server
  # `mllm serve --device cuda` answers an image chat on the tiny Qwen3-VL, streaming and not.
  echo "== mllm serve --device cuda (tiny random Qwen3-VL, one image)" | tee -a "$out/tests.log"
  start_server 30124 "$out/serve_vl.log" 60 --model "$vl"
  img=$(base64 -w0 engine/tests/fixtures/vl/rgb_37x53.png)
  for stream in false true; do
    body='{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,'"$img"'"}},{"type":"text","text":"w5 w6"}]}],"max_tokens":8,"temperature":0,"stream":'$stream'}'
    if curl -sS localhost:30124/v1/chat/completions -H 'content-type: application/json' -d "$body" \
      -o "$out/serve_vl_$stream.json" && grep -q '"choices"' "$out/serve_vl_$stream.json"; then
      echo "serve VL chat (stream $stream): ok ($(head -c 600 "$out/serve_vl_$stream.json"))" | tee -a "$out/tests.log"
    else
      echo "serve VL chat (stream $stream): FAILED (see serve_vl.log)" | tee -a "$out/tests.log"
      status=1
    fi
  done
  stop_server
  echo "== cache after tests (a 'compiled' entry would mean the carried one missed)"
  "$gpu/bin/mllm-kernel" cache list | tee -a "$out/tests.log"
}

run() {
  cd "$root"
  out=${OUT:-$gpu/out}
  if [ -f "$gpu/bundle.tar.xz" ]; then
    # The carried tree is a copy; unpack next to it and run from there.
    rm -rf /tmp/mllm-gpu && mkdir -p /tmp/mllm-gpu && tar -C /tmp/mllm-gpu -xJf "$gpu/bundle.tar.xz"
    cp "$gpu/headers.tar.xz" /tmp/mllm-gpu/
    gpu=/tmp/mllm-gpu
  fi
  mkdir -p "$out"
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  export LD_LIBRARY_PATH="$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
  mkdir -p /tmp/mllm-headers && tar -C /tmp/mllm-headers -xJf "$gpu/headers.tar.xz"
  export CUTLASS_HOME=/tmp/mllm-headers/cutlass FLASHINFER_HOME=/tmp/mllm-headers/flashinfer
  # A private copy: the carried tree is read-only to no one, but keep it pristine.
  cache=/tmp/mllm-kernel-cache && rm -rf "$cache" && cp -r "$gpu/cache" "$cache" && chmod -R go-w "$cache"
  export MLLM_KERNEL_CACHE_DIR=$cache
  status=0
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$gpu/bin/mllm-kernel" env
    echo "== cache as carried"; "$gpu/bin/mllm-kernel" cache list
  } 2>&1 | tee "$out/env.log"
  # MLLM_GPU_TESTS=0 skips the tests (fixtures, test binaries, serve chats): benchmarks only.
  [ "${MLLM_GPU_TESTS:-1}" = 0 ] || gpu_tests
  # MLLM_GPU_BENCH picks benchmark groups (space-separated): norm core int8 int8-decode int8-small int8-mid
  # int8-swizzle mlp jit attention engine profile timeline serve vl (none: no benchmarks).
  for group in ${MLLM_GPU_BENCH:-norm core int8 mlp jit attention engine profile timeline serve vl}; do
    case "$group" in
      norm)
        for op in rms-norm fused-add-rms-norm per-token-quant-int8; do
          "$gpu/bin/mllm-kernel" bench "$op" --hidden 4096 --tokens 1,16,64,256,1024,2048,4096,8192
        done 2>&1 | tee -a "$out/bench.log" || status=1
        # Three more runs as JSON lines: the machine is shared, so report
        # the median of the runs' ratios to the copy peer.
        for rep in 1 2 3; do
          for op in rms-norm fused-add-rms-norm per-token-quant-int8; do
            "$gpu/bin/mllm-kernel" bench "$op" --json --hidden 4096 --tokens 1,16,64,256,1024,2048,4096,8192 || status=1
          done
        done >>"$out/bench.jsonl" 2>&1
        ;;
      int8)
        "$gpu/bin/mllm-kernel" bench int8-mm 2>&1 | tee -a "$out/bench.log" || status=1
        # Small M again as CUDA-graph replays (no host launch cost on either side, as in decode).
        "$gpu/bin/mllm-kernel" bench int8-mm --graph --ms 1,16,64,128,256 2>&1 |
          sed 's/^/[graph] /' | tee -a "$out/bench.log" || status=1
        MLLM_INT8_MM_PATH=sm80 "$gpu/bin/mllm-kernel" bench int8-mm --ms 1,16,64,128,256,1024,4096 2>&1 |
          sed 's/^/[forced sm80 path] /' | tee -a "$out/bench.log" || status=1
        # Every config on every shape: the data behind the dispatch table.
        "$gpu/bin/mllm-kernel" bench int8-mm --sweep --json --repeats 10 >>"$out/int8_sweep.jsonl" 2>&1 || status=1
        ;;
      core)
        {
          "$gpu/bin/mllm-kernel" bench silu-and-mul --hidden 12288 --tokens 1,16,256,1024,4096
          for op in qk-norm-rope embedding kv-store; do
            "$gpu/bin/mllm-kernel" bench "$op" --hidden 4096 --tokens 1,16,256,1024,4096,8192
          done
          "$gpu/bin/mllm-kernel" bench argmax --tokens 1,16,64,256
          "$gpu/bin/mllm-kernel" bench sampling --tokens 1,16,64
        } 2>&1 | tee -a "$out/bench.log" || status=1
        ;;
      mlp)
        # The W8A8 MLP block of one decode row: decode_mlp against its four kernels, replayed
        # from CUDA graphs, at the default ring (the deepest that leaves room for two blocks an
        # SM: 11 stages at Qwen3-8B's sizes on an H100), a shallower one and one block an SM of
        # 16 stages (MLLM_DECODE_MLP_STAGES).
        for st in "" 8 16; do
          MLLM_DECODE_MLP_STAGES=$st "$gpu/bin/mllm-kernel" bench decode-mlp --graph 2>&1 |
            sed "s/^/[stages ${st:-default}] /" | tee -a "$out/bench.log" || status=1
        done
        ;;
      jit) "$gpu/bin/mllm-kernel" bench jit 2>&1 | tee -a "$out/bench.log" || status=1 ;;
      attention)
        # CUDA-graph replays, as the engine's decode runs (docs/decode_attention.md).
        {
          "$gpu/bin/mllm-kernel" bench attention --graph --batch 1 --context 2048,4096,8192,16384,32768
          "$gpu/bin/mllm-kernel" bench attention --graph --batch 4,16,64 --context 1024,4096
        } 2>&1 | tee -a "$out/bench.log" || status=1
        ;;
      int8-decode)
        # Decode's M as CUDA-graph replays, quickly: ours vs cuBLASLt, and the dynamic path's
        # overhead over the GEMM (M <= 4 quantizes inside stream_m16).
        "$gpu/bin/mllm-kernel" bench int8-mm --graph --ms 1,4,16 2>&1 | sed 's/^/[graph] /' |
          tee -a "$out/bench.log" || status=1
        # Every config there too.
        "$gpu/bin/mllm-kernel" bench int8-mm --graph --sweep --json --ms 1,4,16 >>"$out/int8_sweep.jsonl" 2>&1 || status=1
        ;;
      int8-swizzle)
        # The large shapes (Qwen3-8B at M = 4096, 8192^3) on every config at each tile
        # swizzle of CUTLASS's persistent scheduler; each record's env says which.
        for sw in ${MLLM_GPU_SWIZZLES:-1 2 4 8}; do
          MLLM_INT8_MM_SWIZZLE=$sw "$gpu/bin/mllm-kernel" bench int8-mm --sweep --json --repeats 10 --ms 4096 \
            >>"$out/int8_swizzle.jsonl" 2>&1 || status=1
        done
        ;;
      int8-small)
        # Small M only: every config, the decode shapes.
        "$gpu/bin/mllm-kernel" bench int8-mm --ms 1,16 2>&1 | tee -a "$out/bench.log" || status=1
        "$gpu/bin/mllm-kernel" bench int8-mm --sweep --json --repeats 10 --ms 1,16 >>"$out/int8_sweep.jsonl" 2>&1 || status=1
        ;;
      int8-mid)
        # Decode batches above 64 (65-256 rows) as CUDA-graph replays: every config, among them
        # the 128-token swap-AB tile, against cuBLASLt int8.
        "$gpu/bin/mllm-kernel" bench int8-mm --graph --sweep --json --repeats 10 --ms 65,96,128,256 \
          >>"$out/int8_sweep.jsonl" 2>&1 || status=1
        ;;
      engine)
        # Qwen3-8B with random weights, bf16 and W8A8 in the same run: batch 1 at a
        # 2048-token prompt, batch 64 at 1024.
        # MLLM_GPU_ENGINE_SHAPES ("batch input output", comma-separated) narrows the runs;
        # MLLM_GPU_ENGINE_ENVS (';'-separated sets of VAR=value assignments, e.g.
        # "MLLM_DECODE_KERNEL=auto;MLLM_DECODE_KERNEL=split-kv MLLM_LINEAR_SMALL_M=stream")
        # repeats them once per set; each record's env says which ran.
        # MLLM_GPU_ENGINE_ARGS (';'-separated sets of extra arguments, e.g.
        # ";--disable-overlap-schedule") repeats each run once per set (record flags say which).
        IFS=, read -r -a shapes <<<"${MLLM_GPU_ENGINE_SHAPES:-1 2048 64,64 1024 32}"
        IFS=';' read -r -a env_sets <<<"${MLLM_GPU_ENGINE_ENVS:-MLLM_GPU_ENGINE_ENVS=default}"
        IFS=';' read -r -a arg_sets <<<"${MLLM_GPU_ENGINE_ARGS:-}"
        [ ${#arg_sets[@]} -gt 0 ] || arg_sets=("")
        for env_set in "${env_sets[@]}"; do
          for quant in "" "--quantization w8a8"; do
            for shape in "${shapes[@]}"; do
              for extra in "${arg_sets[@]}"; do
                set -- $shape
                # shellcheck disable=SC2086
                env $env_set "$gpu/bin/mllm" bench-one-batch --device cuda --load-format dummy \
                  --weight-dtype bf16 $quant --model-config engine/tests/fixtures/qwen3-8b.config.json \
                  --batch-size "$1" --input-len "$2" --output-len "$3" --cuda-graph-max-bs 64 --warmup 1 \
                  --repeats 3 $extra --json --out "$out/bench_one_batch.jsonl" 2>&1 | tee -a "$out/bench.log" ||
                  status=1
              done
            done
          done
        done
        ;;
      profile)
        # Where a batch-1 decode step's GPU time goes, per kernel: eager steps (graphs off)
        # under Nsight Compute when the machine has it, one metric (kernel duration), caches
        # and clocks left alone. Kernels run one at a time under ncu, so the sum has no
        # overlap and no launch gaps; the graph replay's time in `engine` has both.
        if command -v ncu >/dev/null; then
          # MLLM_GPU_PROFILE ("bf16 w8a8" by default) picks the models profiled.
          for label in ${MLLM_GPU_PROFILE:-bf16 w8a8}; do
            quant="" && [ "$label" = bf16 ] || quant="--quantization $label"
            # shellcheck disable=SC2086
            timeout 300 ncu --metrics gpu__time_duration.sum --csv --page raw --cache-control none \
              --clock-control none "$gpu/bin/mllm" bench-one-batch --device cuda --load-format dummy \
              --weight-dtype bf16 $quant --model-config engine/tests/fixtures/qwen3-8b.config.json \
              --batch-size 1 --input-len 2048 --output-len 3 --disable-cuda-graph --warmup 0 --repeats 1 \
              >"$out/ncu_decode_$label.csv" 2>>"$out/bench.log" || status=1
            if command -v python3 >/dev/null; then
              python3 scripts/ncu_step.py "$out/ncu_decode_$label.csv" | tee -a "$out/bench.log" || status=1
            fi
          done
        else
          echo "profile: no ncu on this machine" | tee -a "$out/bench.log"
        fi
        ;;
      timeline)
        # A batch-1 decode step as the CUDA graph replays it, PDL included: every kernel's
        # start and end from CUPTI (bench-one-batch --kernel-timeline), summarized per kind
        # with the idle gaps and overlap between kernels (scripts/timeline_step.py).
        # MLLM_GPU_PROFILE ("bf16 w8a8" by default) picks the models.
        for label in ${MLLM_GPU_PROFILE:-bf16 w8a8}; do
          quant="" && [ "$label" = bf16 ] || quant="--quantization $label"
          # shellcheck disable=SC2086
          "$gpu/bin/mllm" bench-one-batch --device cuda --load-format dummy --weight-dtype bf16 $quant \
            --model-config engine/tests/fixtures/qwen3-8b.config.json --batch-size 1 --input-len 2048 \
            --output-len 16 --warmup 0 --repeats 1 --kernel-timeline "$out/timeline_$label.csv" \
            2>&1 | tee -a "$out/bench.log" || status=1
          if command -v python3 >/dev/null; then
            python3 scripts/timeline_step.py "$out/timeline_$label.csv" | tee -a "$out/bench.log" || status=1
          fi
        done
        ;;
      serve)
        # Qwen3-8B with random weights behind `mllm serve --device cuda`, bf16 and W8A8 in the
        # same run: bench-serve (token-id prompts through /generate) at concurrency 1 and 16.
        # Each JSON record carries the server's /server_info (device, quantization, dtypes).
        for quant in "" "--quantization w8a8"; do
          # shellcheck disable=SC2086
          start_server 30125 "$out/serve_bench.log" 600 --dummy-config engine/tests/fixtures/qwen3-8b.config.json \
            --weight-dtype bf16 $quant --max-running-requests 64 --context-length 4096
          for conc in 1 16; do
            "$gpu/bin/mllm" bench-serve --port 30125 --backend native --num-prompts $((conc * 4 > 8 ? conc * 4 : 8)) \
              --max-concurrency "$conc" --input-len-range 512:1024 --output-len-range 128:256 --seed 0 \
              --warmup-requests 2 --disable-progress --output-file "$out/bench_serve.jsonl" 2>&1 |
              sed "s/^/[serve ${quant:-bf16} conc $conc] /" | tee -a "$out/bench.log" || status=1
          done
          stop_server
        done
        ;;
      vl)
        # Qwen3-VL-2B-Instruct with random weights, bf16 and W8A8 (text decoder only) in the
        # same run: one 448x448 image (196 placeholder tokens) in a 512-token prompt at batch
        # 1 and 8, and in a 2048-token prompt at batch 1 (pymllm's published input length);
        # the record's vision_encode_s is the tower's share of the prefill.
        for quant in "" "--quantization w8a8"; do
          for shape in "1 512" "8 512" "1 2048"; do
            set -- $shape
            # shellcheck disable=SC2086
            "$gpu/bin/mllm" bench-one-batch --device cuda --load-format dummy --weight-dtype bf16 $quant \
              --model-config engine/tests/fixtures/qwen3-vl-2b.config.json --image-size 448 \
              --batch-size "$1" --input-len "$2" --output-len 64 --cuda-graph-max-bs 64 --warmup 1 --repeats 3 --json \
              --out "$out/bench_vl.jsonl" 2>&1 | tee -a "$out/bench.log" || status=1
          done
        done
        ;;
      none) ;;
      *) echo "unknown bench group $group" | tee -a "$out/bench.log"; status=1 ;;
    esac
  done
  exit $status
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
