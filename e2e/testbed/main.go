package testbed

import (
	"fmt"
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

// since formats the time since start for the test log.
func since(start time.Time) time.Duration {
	return time.Since(start).Round(time.Millisecond)
}
