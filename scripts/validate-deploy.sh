#!/usr/bin/env bash
# Validate deploy/: every Kubernetes manifest against the API's JSON schemas (offline, with the
# schemas bundled in the pinned kubernetes-validate that scripts/setup.sh installs), the
# kustomization's file list, and the Dockerfile's structure. No cluster and no Docker needed.
# Exit 1 on the first kind of problem found, naming the file.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/validate-deploy.sh [DEPLOY_DIR]
  DEPLOY_DIR  default: deploy/ beside this script. Needs $MLLM_KUBERNETES_VALIDATE
              (source .toolchain/env.sh after scripts/setup.sh).
Env: MLLM_K8S_VERSION  Kubernetes version to validate against (default 1.33.0).
EOF
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPLOY="${1:-$ROOT/deploy}"
K8S_VERSION="${MLLM_K8S_VERSION:-1.33.0}"
say() { echo "validate-deploy: $*"; }
fail() { echo "validate-deploy: error: $*" >&2; exit 1; }

VALIDATE="${MLLM_KUBERNETES_VALIDATE:-}"
[[ -n "$VALIDATE" && -x "$VALIDATE" ]] ||
  fail "kubernetes-validate not found (\$MLLM_KUBERNETES_VALIDATE='$VALIDATE'): run scripts/setup.sh, then source .toolchain/env.sh"
[[ -d "$DEPLOY/k8s" ]] || fail "$DEPLOY/k8s is not a directory"

# ---- 1. manifests: schema, strict (unknown fields are errors) --------------------------
manifests=()
for f in "$DEPLOY"/k8s/*.yaml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done
((${#manifests[@]} > 0)) || fail "no manifests in $DEPLOY/k8s"
"$VALIDATE" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}" ||
  fail "a manifest fails the Kubernetes $K8S_VERSION schema (see above)"
say "${#manifests[@]} manifest(s) match the Kubernetes $K8S_VERSION schemas"

# ---- 2. kustomization: every resource exists, every manifest is listed -----------------
# The venv's python has PyYAML (a kubernetes-validate dependency).
PY="$(dirname "$VALIDATE")/python"
if [[ -f "$DEPLOY/k8s/kustomization.yaml" ]]; then
  "$PY" - "$DEPLOY/k8s" <<'PY' || fail "$DEPLOY/k8s/kustomization.yaml is inconsistent (see above)"
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
bad = []
if k.get("kind") != "Kustomization":
    bad.append(f"kind is {k.get('kind')!r}, not 'Kustomization'")
listed = k.get("resources") or []
bad += [f"resource {r} does not exist" for r in listed if not os.path.isfile(os.path.join(d, r))]
files = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
bad += [f"{f} is not listed in resources" for f in sorted(files - set(listed))]
for b in bad:
    print(f"validate-deploy: kustomization: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
  say "kustomization.yaml lists every manifest"
fi

# ---- 3. Dockerfile: structure (no Docker daemon here) ----------------------------------
# Known instructions only, continuations closed, stages named, every COPY --from names an
# earlier stage, base images pinned to a tag, a non-root USER and a VOLUME in the final stage.
DOCKERFILE="$DEPLOY/Dockerfile"
[[ -f "$DOCKERFILE" ]] || fail "$DOCKERFILE not found"
"$PY" - "$DOCKERFILE" <<'PY' || fail "$DOCKERFILE is malformed (see above)"
import re, sys
path = sys.argv[1]
known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
bad, stages, cur, logical, start = [], [], None, "", 0
lines = open(path).read().split("\n")
def take(no, text):
    global cur
    word, _, rest = text.strip().partition(" ")
    op = word.upper()
    if op not in known:
        bad.append(f"line {no}: unknown instruction {word!r}")
        return
    if op == "FROM":
        m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
        if not m:
            bad.append(f"line {no}: cannot parse FROM {rest!r}"); return
        image, name = m.group(1), m.group(2)
        if image.lower() not in {s["name"] for s in stages} and (":" not in image or image.endswith(":latest")):
            bad.append(f"line {no}: base image {image} is not pinned to a tag")
        cur = {"name": (name or "").lower(), "user": None, "volume": False}
        stages.append(cur)
    elif cur is None:
        if op != "ARG":
            bad.append(f"line {no}: {op} before the first FROM")
    elif op == "COPY":
        m = re.search(r"--from=(\S+)", rest)
        if m and m.group(1).lower() not in {s["name"] for s in stages[:-1]}:
            bad.append(f"line {no}: COPY --from={m.group(1)} names no earlier stage")
    elif op == "USER":
        cur["user"] = rest.strip()
    elif op == "VOLUME":
        cur["volume"] = True
for i, line in enumerate(lines, 1):
    s = line.strip()
    if not logical and (not s or s.startswith("#")):
        continue
    if logical and s.startswith("#"):
        continue  # comment lines inside a continuation are dropped by Docker
    if not logical:
        start = i
    logical += " " + line
    if s.endswith("\\"):
        logical = logical.rstrip()[:-1]
        continue
    take(start, logical); logical = ""
if logical:
    bad.append(f"line {start}: continuation runs past the end of the file")
if not stages:
    bad.append("no FROM")
else:
    last = stages[-1]
    if last["user"] in (None, "", "0", "root"):
        bad.append("the final stage does not switch to a non-root USER")
    if not last["volume"]:
        bad.append("the final stage declares no VOLUME (the kernel cache)")
for b in bad:
    print(f"validate-deploy: {path}: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
say "Dockerfile structure ok"
say "deploy/ is valid"
