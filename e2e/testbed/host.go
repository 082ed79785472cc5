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

// ClosingListener listens on a loopback port and closes every connection
// it accepts, until tb ends: a server that is there and answers nothing.
// It returns the address.
func ClosingListener(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return closeEveryConnection(tb, l)
}

// closeEveryConnection accepts on l and closes each connection at once,
// until tb ends, and returns l's address.
func closeEveryConnection(tb testing.TB, l net.Listener) string {
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().String()
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
