#!/usr/bin/env bash
# Runs a command (the tests, the benchmarks) in a network namespace of its
# own whose only interface is loopback, so that nothing it starts can send a
# packet off the machine: a test that tries to resolve or dial another host
# fails at once with "network is unreachable" instead of reaching it. The
# test bed's own hosts (edge and router namespaces) are made inside it.
#
# Go modules must already be in the module cache (the Makefile downloads
# them first): nothing inside can reach a module proxy.
#
# Usage: offline.sh COMMAND [ARG...]
set -euo pipefail

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
	echo "offline.sh: running without a namespace of its own (it needs root and unshare);" \
		"the tests still address loopback only" >&2
	exec "$@"
fi
exec unshare --net -- bash -c 'ip link set lo up && exec "$@"' offline.sh "$@"
