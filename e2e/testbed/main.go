package testbed

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// exit holds what Main stops when the test binary ends.
var exit struct {
	mu     sync.Mutex // guards the fields below
	inMain bool
	funcs  []func()

	once sync.Once // runs funcs; a second caller waits for the first
}

// Main runs the package's tests, then stops the processes the test bed
// shares between tests (the PostgreSQL server) and exits with the tests'
// code. Call it from TestMain. An interrupt (SIGINT, SIGTERM) also stops
// them before the binary exits.
func Main(m *testing.M) {
	exit.mu.Lock()
	exit.inMain = true
	exit.mu.Unlock()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "testbed: %v: stopping shared processes\n", sig)
		runAtExit()
		os.Exit(2)
	}()

	code := m.Run()
	signal.Stop(sigs)
	runAtExit()
	// A test that had go-git try a host off the machine fails the binary,
	// whether or not it watched: the connection was refused, but the test
	// tried it.
	if refused := refusedGitDials(); len(refused) > 0 {
		fmt.Fprintf(os.Stderr, "testbed: FAIL: tests had go-git try to connect off this machine (refused): %v\n", refused)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// atExit registers fn to run when Main ends the test binary; fns run in
// reverse order of registration. For processes shared between tests.
func atExit(fn func()) {
	exit.mu.Lock()
	defer exit.mu.Unlock()
	exit.funcs = append(exit.funcs, fn)
}

func runAtExit() {
	exit.once.Do(func() {
		exit.mu.Lock()
		funcs := exit.funcs
		exit.funcs = nil
		exit.mu.Unlock()
		for i := len(funcs) - 1; i >= 0; i-- {
			funcs[i]()
		}
	})
}

// requireMain fails t unless the test binary runs under Main, which is
// what stops shared processes and removes their files.
func requireMain(t testing.TB) {
	t.Helper()
	exit.mu.Lock()
	defer exit.mu.Unlock()
	if !exit.inMain {
		t.Fatal("testbed: this package's tests must run under testbed.Main, which stops shared processes: add\n\tfunc TestMain(m *testing.M) { testbed.Main(m) }")
	}
}

// Logger returns a logger whose records go to t's log (shown for failed
// tests and with -v), at every level. Records made after t and its
// cleanups have finished are dropped, not a panic, so it is safe to hand
// to goroutines that may outlive the test by a moment.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{out: t.Output()}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000"))
			}
			return a
		},
	}))
}

// testWriter writes to a test's output until the test is over.
type testWriter struct {
	mu     sync.RWMutex // guards closed; held while writing so close waits
	out    io.Writer
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return len(p), nil
	}
	return w.out.Write(p)
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// since formats the time since start for the test log.
func since(start time.Time) time.Duration {
	return time.Since(start).Round(time.Millisecond)
}
