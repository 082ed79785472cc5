package demo

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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

// proc is one program the demo runs, in a process group of its own, its
// output appended to a log file.
type proc struct {
	name    string // for messages and the log's name, e.g. "agent-prod-1"
	logPath string
	logFrom int64 // size of the log before this run: a restart appends to it
	pid     int

	done chan struct{} // closed once the process has exited and been reaped
	err  error         // what Wait returned; read only after done is closed
}

// startProc starts bin with args and env, logging to dir/NAME.log, and
// stops it when t ends. Secrets go in env, never in args: args are in the
// log and in every user's `ps`.
func startProc(t *testing.T, dir, name, bin string, args, env []string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	// 0600: the hub prints its initial admin token, and the demo's
	// directory is open to others (the embedded PostgreSQL's user).
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	info, err := logFile.Stat()
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	fmt.Fprintf(logFile, "==> %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A group of its own keeps a terminal's Ctrl-C away from the child, so
	// that the demo stops its parts in order; Pdeathsig kills it if the
	// demo dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := onSpawnThread(cmd.Start); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, logPath: logPath, logFrom: info.Size(), pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.stop() {
			t.Logf("%s did not stop within %v of SIGTERM: killed", name, stopGrace)
		}
	})
	return p
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes the end of a process the demo still needed, with
// the end of its log; call it only once exited.
func (p *proc) exitError() error {
	status := "exited with status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	return fmt.Errorf("%s (pid %d) %s; last lines of %s:\n%s", p.name, p.pid, status, p.logPath, p.tail(logTailLines))
}

// stop ends the process and its group: SIGTERM, then SIGKILL after
// stopGrace. It returns once the process has been reaped, false if it had
// to be killed.
func (p *proc) stop() bool {
	if p.exited() {
		return true
	}
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
		return false
	}
}

// tail returns the last n lines this run wrote to the log.
func (p *proc) tail(n int) string {
	const maxBytes = 64 << 10
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	from := max(p.logFrom, info.Size()-maxBytes)
	b, err := io.ReadAll(io.NewSectionReader(f, from, info.Size()-from))
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// logContains reports whether this run's log contains s.
func (p *proc) logContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	return err == nil && int64(len(b)) >= p.logFrom && strings.Contains(string(b[p.logFrom:]), s)
}

// Children die with the OS thread that started them, not with the process:
// Pdeathsig fires when the forking thread ends, and the Go runtime ends a
// thread when a goroutine locked to it returns. So every child is started
// from one locked thread that lives as long as the test binary, as the
// test bed does for its own.
var (
	spawnOnce     sync.Once
	spawnRequests chan func()
)

// onSpawnThread runs start on the spawn thread and returns its error.
func onSpawnThread(start func() error) error {
	spawnOnce.Do(func() {
		spawnRequests = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not be reused or ended
			for req := range spawnRequests {
				req()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnRequests <- func() { errc <- start() }
	return <-errc
}
