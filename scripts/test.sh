#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the pinned toolchain,
# then format check, clippy, rustdoc, every CPU test (the GPU ones skip with a
# reason), the AOT build, and a real compile of every kernel for the archs
# we ship with the pinned nvcc.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .toolchain/env.sh
step() { printf '\n== %s\n' "$*"; }
# A one-shot run gains nothing from incremental caches; they cost gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kib / 1024)) MiB free under $root; a full run needs about 6 GiB" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc -D warnings (broken or private doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
step "deploy/ (k8s schemas, kustomization, Dockerfile)"; bash scripts/validate-deploy.sh
step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace
fi
# `check` compiles every kernel for both archs with the JIT's commands; the AOT build
# proves build.rs's path (cc + nvcc, embedded cubins, static link). The AOT build is sm_80
# only: with sm_90a it recompiles the CUTLASS 3.x GEMM check compiles (11 min here, not 4);
# `scripts/gpu-test.sh build` builds and runs the sm_90a AOT binaries on the GPU machine.
# The two run side by side: each ends on one CUTLASS translation unit with a core idle
# (check the 3.x GEMM, the AOT build the 2.x one), 703 s one after the other here.
step "mllm-kernel check (every kernel, sm_80 + sm_90a, pinned nvcc) beside the AOT build (MLLM_CUDA_ARCHS=80)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The binary the test build linked for the CLI tests, copied: the AOT build relinks that
# path meanwhile. `cargo run` would resolve the root package's features alone (no engine,
# no dev-dependencies) and recompile half, cudarc and the kernel crate first (70 s here).
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cp "$target_dir/debug/mllm-kernel" "$work/mllm-kernel"
(MLLM_CUDA_ARCHS="80" MLLM_AOT_ATTENTION_VARIANTS=d128_bf16 cargo build --features aot --bins) >"$work/aot.log" 2>&1 &
aot=$!
check_rc=0
"$work/mllm-kernel" check --arch sm_80 --arch sm_90a || check_rc=$?
aot_rc=0
wait "$aot" || aot_rc=$?
step "AOT build (MLLM_CUDA_ARCHS=80, attention d128_bf16), its output"
cat "$work/aot.log"
if ((check_rc != 0 || aot_rc != 0)); then
  echo "failed: mllm-kernel check exit $check_rc, AOT build exit $aot_rc" >&2
  exit 1
fi
step "benches compile and link (dev profile: the tests' dependencies are built already)"
cargo build --workspace --benches --quiet
echo "all checks passed"
