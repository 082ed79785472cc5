package demo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
)

const (
	// stopGrace is how long a process has between SIGTERM and SIGKILL.
	stopGrace = 10 * time.Second
	// logTailLines is how much of a process's log a failure shows.
	logTailLines = 30
)

// childEnv is the environment of every program the demo runs: this
// process's, without DROVER_... variables, which would configure the hub,
// the agents and droverctl behind the demo's back (a DROVER_DATABASE_URL
// would replace the embedded PostgreSQL), plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DROVER_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// startProc starts bin with args and env, logging to dir/NAME.log, and
// stops it when t ends. Secrets go in env, never in args: args are in the
// log and in every user's `ps`.
func startProc(t *testing.T, dir, name, bin string, args, env []string) *testbed.Process {
	t.Helper()
	p, err := testbed.StartProcess(name, bin, args, env, "", filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p.Stop(stopGrace) {
			t.Logf("%s did not stop within %v of SIGTERM: killed", name, stopGrace)
		}
	})
	return p
}
