package demo

import (
	"os"
	"os/exec"
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

// bins are the programs the demo runs, as a user would.
type bins struct {
	hub, agent, ctl string
}

// binaries returns drover-hub, drover-agent and droverctl: from
// $DROVER_BIN_DIR (make demo builds them there first), else built for this
// test.
func binaries(t *testing.T) bins {
	t.Helper()
	if dir := os.Getenv("DROVER_BIN_DIR"); dir != "" {
		b := bins{hub: filepath.Join(dir, "drover-hub"), agent: filepath.Join(dir, "drover-agent"), ctl: filepath.Join(dir, "droverctl")}
		for _, p := range []string{b.hub, b.agent, b.ctl} {
			info, err := os.Stat(p)
			if err != nil || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
				t.Fatalf("DROVER_BIN_DIR=%s has no program %s: run `make build`, or unset DROVER_BIN_DIR to build them here", dir, filepath.Base(p))
			}
		}
		return b
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("build the binaries: %v (or set DROVER_BIN_DIR to a directory with them, e.g. bin/ after `make build`)", err)
	}
	dir := t.TempDir()
	started := time.Now()
	// The test runs in its package's directory, inside the module, so the
	// import paths resolve to this checkout.
	cmd := exec.Command(goBin, "build", "-o", dir+string(filepath.Separator),
		"github.com/drover-dev/drover/hub/cmd/drover-hub",
		"github.com/drover-dev/drover/hub/cmd/droverctl",
		"github.com/drover-dev/drover/agent/cmd/drover-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the binaries: %v\n%s", err, out)
	}
	t.Logf("built drover-hub, drover-agent and droverctl in %s", time.Since(started).Round(time.Millisecond))
	return bins{hub: filepath.Join(dir, "drover-hub"), agent: filepath.Join(dir, "drover-agent"), ctl: filepath.Join(dir, "droverctl")}
}

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
