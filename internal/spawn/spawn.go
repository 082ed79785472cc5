// Package spawn starts child processes that die with the process that
// started them, even when it is killed with SIGKILL.
//
// Linux's parent-death signal (Pdeathsig) fires when the OS thread that
// forked the child ends, not when the process does, and the Go runtime ends
// a thread whenever a goroutine locked to it returns (code that enters
// network namespaces does that on purpose). A child started from an
// arbitrary goroutine can therefore be killed at a random moment. Start
// forks every child from one locked thread that lives as long as the
// process.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

var (
	once     sync.Once
	requests chan func()
)

// Start starts cmd from the spawn thread with SIGKILL as its parent-death
// signal, keeping any other SysProcAttr settings of cmd. Wait for it as
// usual.
func Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	once.Do(func() {
		requests = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must not end
			for req := range requests {
				req()
			}
		}()
	})
	errc := make(chan error, 1)
	requests <- func() { errc <- cmd.Start() }
	return <-errc
}
