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
  cargo test --release --no-run --message-format=json --test gpu_ops --test gpu_int8_mm --test gpu_core_ops 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$gpu/bin"
  # The same tests against the AOT build (kernels linked in, no cache used).
  MLLM_CUDA_ARCHS="$(echo "$archs" | sed 's/sm_//g; s/ /;/g')" \
    cargo test --release --features aot --no-run --message-format=json --test gpu_ops --test gpu_int8_mm --test gpu_core_ops 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/aot_" + m["target"]["name"])
' "$gpu/bin"
  strip "$gpu"/bin/*
  # Prebuilt cache: the GPU machine then loads instead of compiling.
  for a in $archs; do
    MLLM_KERNEL_CACHE_DIR="$gpu/cache" "$gpu/bin/mllm-kernel" cache rebuild --arch "$a"
  done
  tar -C third_party -cJf "$gpu/headers.tar.xz" cutlass flashinfer
  du -sh "$gpu"
}

run() {
  cd "$root"
  out=${OUT:-$gpu/out}
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
  for t in "$gpu"/bin/*; do
    name=$(basename "$t")
    case "$name" in
      mllm-kernel) continue ;;
      aot_*)
        # AOT: JIT off and an empty cache, so any cache use would fail.
        echo "== $name (MLLM_KERNEL_JIT=0, empty cache)" | tee -a "$out/tests.log"
        rm -rf /tmp/mllm-empty-cache
        MLLM_KERNEL_JIT=0 MLLM_KERNEL_CACHE_DIR=/tmp/mllm-empty-cache "$t" --test-threads=1 --nocapture 2>&1 |
          tee -a "$out/tests.log" || status=1
        ;;
      *)
        echo "== $name" | tee -a "$out/tests.log"
        "$t" --test-threads=1 --nocapture 2>&1 | tee -a "$out/tests.log" || status=1
        ;;
    esac
  done
  echo "== cache after tests (a 'compiled' entry would mean the carried one missed)"
  "$gpu/bin/mllm-kernel" cache list | tee -a "$out/tests.log"
  # MLLM_GPU_BENCH picks benchmark groups (space-separated): norm core int8 jit.
  for group in ${MLLM_GPU_BENCH:-norm core int8 jit}; do
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
        } 2>&1 | tee -a "$out/bench.log" || status=1
        ;;
      jit) "$gpu/bin/mllm-kernel" bench jit 2>&1 | tee -a "$out/bench.log" || status=1 ;;
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
