#!/usr/bin/env bash
# Builds the Go tools the tests use from their published modules, pinned, once per machine, into
# a cache outside the repo (ARTGC_TOOLS, default /opt/artgc-tools), and prints where each is.
# Usage: eval "$(.ci/tools.sh)"   -> exports ARTGC_HELM
set -euo pipefail
root=${ARTGC_TOOLS:-/opt/artgc-tools}
helm_version=v3.19.0

build() { # name version module-path
    local dir="$root/$1-$2"
    if [ ! -x "$dir/$1" ]; then
        local start=$SECONDS
        echo "building $1 $2 from $3 (first time on this machine)" >&2
        mkdir -p "$dir"
        (cd /tmp && GOBIN="$dir" GOFLAGS=-mod=mod go install "$3@$2") >&2
        echo "built $1 $2 in $((SECONDS - start)) s" >&2
    fi
    echo "$dir/$1"
}

command -v go > /dev/null || { echo "go is not installed" >&2; exit 1; }
echo "export ARTGC_HELM=$(build helm "$helm_version" helm.sh/helm/v3/cmd/helm)"
