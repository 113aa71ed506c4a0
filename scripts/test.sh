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
step "mllm-kernel check (every kernel, sm_80 + sm_90a, pinned nvcc)"
# The binary the test build linked for the CLI tests. `cargo run` would resolve the root
# package's features alone (no engine, no dev-dependencies) and recompile half, cudarc
# and the kernel crate first: 70 s of this step on a 2-core machine.
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/debug/mllm-kernel" check --arch sm_80 --arch sm_90a
# `check` above compiled every kernel for both archs with the JIT's commands; this step
# proves build.rs's AOT path (cc + nvcc, embedded cubins, static link). sm_80 only: with
# sm_90a it recompiles the CUTLASS 3.x GEMM check just compiled (11 min here, not 4);
# `scripts/gpu-test.sh build` builds and runs the sm_90a AOT binaries on the GPU machine.
# (Run beside check, the two took 724 s against ~703 one after the other: both are
# CPU-bound on two cores.)
step "AOT build (MLLM_CUDA_ARCHS=80, attention d128_bf16; check compiled every build)"
MLLM_CUDA_ARCHS="80" MLLM_AOT_ATTENTION_VARIANTS=d128_bf16 cargo build --features aot --bins
step "benches compile and link (dev profile: the tests' dependencies are built already)"
cargo build --workspace --benches --quiet
echo "all checks passed"
