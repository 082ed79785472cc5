package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/drover-dev/drover/internal/spawn"
)

const (
	// stopGrace is how long a child has between SIGTERM and SIGKILL.
	stopGrace = 10 * time.Second
	// logTailLines is how much of a child's log goes into a failure message.
	logTailLines = 30
	// pollInterval paces every readiness check of the test bed.
	pollInterval = 100 * time.Millisecond
)

// Process is a program started by the test bed (or by a test through
// StartProcess): a binary in its own process group, its stdout and stderr
// appended to a log file, killed if the test binary dies.
type Process struct {
	name    string // for messages, e.g. "kube-apiserver testbed-1a2b3c-1"
	logPath string
	logFrom int64 // size of the log before this run, so a tail shows only this run
	pid     int

	done chan struct{} // closed once the process has exited and been reaped
	err  error         // what Wait returned; read only after done is closed

	// stopping is set before the test bed signals the process, so that its
	// exit is not reported as a crash.
	stopping atomic.Bool
}

// startProcess starts bin with args in dir, with env (nil: the test's
// environment), appending its output to logPath.
func StartProcess(name, bin string, args, env []string, dir, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	info, err := logFile.Stat()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	fmt.Fprintf(logFile, "==> %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A group of its own keeps a terminal's Ctrl-C away from the child (the
	// test binary decides when it stops) and lets stop signal all of it;
	// spawn.Start kills it if the test binary dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := spawn.Start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}

	p := &Process{
		name:    name,
		logPath: logPath,
		logFrom: info.Size(),
		pid:     cmd.Process.Pid,
		done:    make(chan struct{}),
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Status describes how the process ended; call it only once exited.
func (p *Process) Status() string {
	if p.err == nil {
		return "exited with status 0"
	}
	return p.err.Error()
}

// ExitError is the error for a process that ended while it was needed,
// with the end of its log.
func (p *Process) ExitError() error {
	return fmt.Errorf("%s %s; last lines of %s:\n%s", p.name, p.Status(), p.logPath, p.Tail(logTailLines))
}

// Stop ends the process and its group: SIGTERM, then SIGKILL after grace.
// It returns once the process has been reaped, false if it had to be
// killed.
func (p *Process) Stop(grace time.Duration) bool {
	p.stopping.Store(true)
	if p.Exited() {
		return true
	}
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
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

// Tail returns the last n lines this run wrote to the log.
func (p *Process) Tail(n int) string {
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

// LogContains reports whether this run's log contains s.
func (p *Process) LogContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	if err != nil || int64(len(b)) < p.logFrom {
		return false
	}
	return bytes.Contains(b[p.logFrom:], []byte(s))
}

// bindFailed reports whether the process ended because a port it was given
// was taken in the meantime (another test binary picked the same free
// port). The child's log is the only place that says so.
// Pid is the process's id.
func (p *Process) Pid() int { return p.pid }

// LogPath is the file the process logs to.
func (p *Process) LogPath() string { return p.logPath }

func (p *Process) bindFailed() bool {
	return p.Exited() && p.LogContains("address already in use")
}

// stopAll stops the processes concurrently and waits for all of them.
func stopAll(procs []*Process) {
	var wg sync.WaitGroup
	for _, p := range procs {
		if p != nil {
			wg.Go(func() { p.Stop(stopGrace) })
		}
	}
	wg.Wait()
}

// waitUntil calls cond every pollInterval until it reports true. It fails
// when ctx ends or when one of procs exits, with the end of that process's
// log; a timeout error carries cond's last error and the tails of procs.
func waitUntil(ctx context.Context, what string, procs []*Process, cond func(context.Context) (bool, error)) error {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	var lastErr error
	for {
		for _, p := range procs {
			if p.Exited() {
				return fmt.Errorf("wait for %s: %w", what, p.ExitError())
			}
		}
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			err := fmt.Errorf("wait for %s: %w", what, ctx.Err())
			if lastErr != nil {
				err = fmt.Errorf("%w (last error: %v)", err, lastErr)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				for _, p := range procs {
					err = fmt.Errorf("%w\nlast lines of %s:\n%s", err, p.logPath, p.Tail(logTailLines))
				}
			}
			return err
		case <-ticker.C:
		}
	}
}
