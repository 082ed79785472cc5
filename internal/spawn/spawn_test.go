package spawn

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startOnEndingThread runs start on a goroutine locked to an OS thread
// other than the main one, lets that goroutine return — which ends the
// thread — and waits until the thread is gone.
func startOnEndingThread(t *testing.T, start func() error) {
	t.Helper()
	type result struct {
		tid int
		err error
	}
	release := make(chan struct{})
	defer close(release)
	for range 10 {
		res := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			if tid := syscall.Gettid(); tid == os.Getpid() {
				// The main thread is parked, not ended, when its
				// goroutine returns locked: hold it and try another.
				res <- result{tid: tid}
				<-release
				return
			}
			res <- result{tid: syscall.Gettid(), err: start()}
		}()
		r := <-res
		if r.tid == os.Getpid() {
			continue
		}
		if r.err != nil {
			t.Fatalf("start: %v", r.err)
		}
		task := "/proc/self/task/" + strconv.Itoa(r.tid)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(task); os.IsNotExist(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread %d did not end", r.tid)
			}
		}
	}
	t.Fatal("no goroutine ran off the main thread")
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat))
	return len(fields) > 2 && fields[2] != "Z"
}

// A child started with Start from a thread that then ends keeps running,
// while one started there directly with a parent-death signal is killed:
// the case Start exists for. The second child is the control that shows
// the thread's end was delivered.
func TestChildOutlivesTheStartingThread(t *testing.T) {
	viaSpawn, direct := exec.Command("sleep", "60"), exec.Command("sleep", "60")
	direct.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	startOnEndingThread(t, func() error {
		if err := direct.Start(); err != nil {
			return err
		}
		return Start(viaSpawn)
	})
	for _, c := range []*exec.Cmd{viaSpawn, direct} {
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	for deadline := time.Now().Add(10 * time.Second); alive(direct.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the control child outlived its starting thread: the thread's end was not delivered")
		}
	}
	if !alive(viaSpawn.Process.Pid) {
		t.Fatal("the child started with Start died with the thread that asked for it")
	}
}

// The parent-death signal is set whatever else the caller put in
// SysProcAttr.
func TestStartKeepsOtherAttributes(t *testing.T) {
	cmd := exec.Command("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL || !cmd.SysProcAttr.Setpgid {
		t.Fatalf("SysProcAttr %+v: want Pdeathsig SIGKILL and Setpgid kept", cmd.SysProcAttr)
	}
}
