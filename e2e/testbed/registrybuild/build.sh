#!/usr/bin/env bash
# Builds the OCI registry the test bed serves Helm charts and OCI artifacts
# from (CNCF Distribution's cmd/registry) from the Go module proxy into a
# cache directory keyed by its version, once. Prints that directory; the
# binary is bin/registry in it.
#
# Usage: build.sh CACHE_ROOT
set -euo pipefail

# Keep in step with go.mod beside this script and registryToolchain in
# e2e/testbed/registry.go.
DISTRIBUTION_VERSION=v3.1.2

here=$(cd "$(dirname "$0")" && pwd)
root=${1:?usage: build.sh CACHE_ROOT}
dir="$root/registry-$DISTRIBUTION_VERSION"

if [ -x "$dir/bin/registry" ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
say() { echo "testbed: $* ($(( $(date +%s) - start ))s)" >&2; }

say "building the OCI registry (distribution $DISTRIBUTION_VERSION; about 3 minutes on 2 cores with a cold Go cache)"
(cd "$here" && go build -trimpath -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION" -o "$tmp/registry" github.com/distribution/distribution/v3/cmd/registry)

mkdir -p "$dir/bin"
mv -f "$tmp/registry" "$dir/bin/registry"
say "built into $dir"
echo "$dir"
