#!/usr/bin/env bash
# Builds Argo's workflow-controller from its published Go module (testenv/argo, pinned), once per
# machine, into $ARTGC_TOOLS (default /opt/artgc-tools), and prints where it and the module's own
# CRDs are.
# Usage: eval "$(.ci/argo.sh)"   -> exports ARTGC_ARGO_CONTROLLER, ARTGC_ARGO_CRDS
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${ARTGC_TOOLS:-/opt/artgc-tools}
version=v3.7.18
module=github.com/argoproj/argo-workflows/v3

command -v go > /dev/null || { echo "go is not installed" >&2; exit 1; }
out=$root/workflow-controller-$version/workflow-controller
if [ ! -x "$out" ]; then
    start=$SECONDS
    echo "building workflow-controller $version from testenv/argo (first time on this machine)" >&2
    mkdir -p "$(dirname "$out")"
    (cd "$here/testenv/argo" && go build -trimpath -o "$out.tmp" "$module/cmd/workflow-controller") >&2
    mv "$out.tmp" "$out"
    echo "built workflow-controller $version in $((SECONDS - start)) s" >&2
fi
# The module's source (for its CRDs), downloaded again if the module cache was cleaned.
src=$(cd "$here/testenv/argo" && go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src/manifests/base/crds/minimal" ] || { echo "no CRDs in $src" >&2; exit 1; }
echo "export ARTGC_ARGO_CONTROLLER=$out"
echo "export ARTGC_ARGO_CRDS=$src/manifests/base/crds/minimal"
