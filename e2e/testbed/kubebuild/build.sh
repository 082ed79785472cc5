#!/usr/bin/env bash
# Builds the binaries of the test bed's local Kubernetes clusters (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd, kwok) from the Go module proxy
# into a cache directory keyed by their versions, once. Prints that directory.
#
# Usage: build.sh CACHE_ROOT
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
KWOK_VERSION=v0.8.0

here=$(cd "$(dirname "$0")" && pwd)
root=${1:?usage: build.sh CACHE_ROOT}
dir="$root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

# kwok refuses to start without stages; take the "fast" ones its module
# ships (pods become Ready as soon as they are scheduled). Written on every
# run: it costs nothing, and a change here reaches existing caches.
write_stages() {
	local kwokdir tmpf
	kwokdir=$(GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	tmpf=$(mktemp "$dir/.kwok-stages.XXXXXX")
	for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
		f="$kwokdir/kustomize/stage/$s.yaml"
		[ -f "$f" ] || { echo "testbed: kwok stage $s not found in $kwokdir" >&2; rm -f "$tmpf"; exit 1; }
		printf -- '---\n'; cat "$f"; echo
	done > "$tmpf"
	chmod 644 "$tmpf"
	mv -f "$tmpf" "$dir/kwok-stages.yaml"
}

have_all() {
	for b in "${bins[@]}"; do [ -x "$dir/bin/$b" ] || return 1; done
}
if have_all; then
	write_stages
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
say() { echo "testbed: $* ($(( $(date +%s) - start ))s)" >&2; }

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
say "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (about 6 minutes on 2 cores with a cold Go cache)"
(cd "$here/k8s" && go build -trimpath -ldflags "-s -w \
	-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=$minor \
	-X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
	-o "$tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)

say "building etcd $ETCD_VERSION"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)

say "building kwok $KWOK_VERSION"
GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

mkdir -p "$dir/bin"
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$dir/bin/$b"; done
write_stages
say "built into $dir"
echo "$dir"
