package testbed

import (
	"net"
	"strconv"
	"syscall"
	"testing"
)

// FreeAddr returns a loopback address whose port was free a moment ago, for
// programs that take their listen address from a flag or a config and
// must keep it across restarts.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// RaiseOpenFileLimit makes room for atLeast open files (one socket per
// simulated agent, say) in this process and the children it starts.
func RaiseOpenFileLimit(tb testing.TB, atLeast uint64) {
	tb.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatalf("read the open-file limit: %v", err)
	}
	if lim.Cur >= atLeast {
		return
	}
	lim.Cur = atLeast
	lim.Max = max(lim.Max, atLeast)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatalf("raise the open-file limit to %d (ulimit -n %d before running): %v", atLeast, atLeast, err)
	}
}
