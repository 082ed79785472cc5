// Package testlog gives tests a *slog.Logger whose records go to the
// test's own output: shown for a failed test and with -v, and kept apart
// per test. It is the one test logger of the module; e2e/testbed uses it
// too.
package testlog

import (
	"io"
	"log/slog"
	"sync"
	"testing"
)

// New returns a logger writing every level to t's output. Records made
// after t and its cleanups have finished are dropped rather than a panic,
// so it is safe to hand to goroutines that may outlive the test by a
// moment.
func New(t testing.TB) *slog.Logger { return NewAt(t, slog.LevelDebug) }

// NewAt is New for records at min or above: for benchmarks and load tests
// whose debug and info records would drown the output.
func NewAt(t testing.TB, min slog.Level) *slog.Logger {
	w := &writer{out: t.Output()}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: min,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000"))
			}
			return a
		},
	}))
}

// writer writes to a test's output until the test is over.
type writer struct {
	mu     sync.RWMutex // guards closed; held while writing so close waits
	out    io.Writer
	closed bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return len(p), nil
	}
	return w.out.Write(p)
}

func (w *writer) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
