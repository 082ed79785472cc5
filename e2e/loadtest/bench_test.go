//go:build linux

// The benchmark reads the hub's resident memory from /proc and raises the
// open-file limit with setrlimit: Linux, where the hub runs.

package loadtest_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// BenchmarkHubMemory1000 measures the resident memory of a hub process
// holding 1,000 idle agent streams. The hub runs as its own process (built
// from ./hub/cmd/drover-hub) on the test bed's PostgreSQL, so the load
// tool's memory is not counted; the agents are the load tool's, each with
// its own identity and connection. Reported: rss-KiB with the agents, and
// KiB/agent, the growth over the hub's idle RSS divided by the agents.
func BenchmarkHubMemory1000(b *testing.B) {
	const agents = 1000
	raiseOpenFileLimit(b, 4*agents)
	hub := startHubProcess(b)

	var tok droverv1.CreateJoinTokenResponse
	hub.call(b, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"env": "load"}}, &tok)
	base := hub.rssKiB(b)

	for b.Loop() {
		fl, err := loadtest.Start(context.Background(), loadtest.Config{
			HubAddr: hub.agentAddr, ServerName: "127.0.0.1", CAPEM: hub.caPEM, JoinToken: tok.GetToken(),
			Agents: agents, NamePrefix: fmt.Sprintf("mem%d", time.Now().UnixNano()), ConnectRate: 500,
		}, testbed.Logger(b))
		if err != nil {
			b.Fatalf("start the fleet: %v", err)
		}
		// Idle means connected and settled: every agent has its first
		// (empty) assignment and has answered it.
		deadline := time.Now().Add(patience)
		for {
			pending := 0
			for _, a := range fl.Agents() {
				if st := a.State(); !a.Connected() || st.Answered == "" {
					pending++
				}
			}
			if pending == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d agents not settled after %v", pending, agents, patience)
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.StopTimer()
		rss := hub.rssKiB(b)
		b.ReportMetric(float64(rss), "rss-KiB")
		b.ReportMetric(float64(rss-base)/agents, "KiB/agent")
		b.Logf("hub RSS idle %d KiB, with %d agents %d KiB: %.1f KiB per agent", base, agents, rss, float64(rss-base)/agents)
		fl.Close()
		b.StartTimer()
	}
}

// hubProcess is drover-hub running as a child process.
type hubProcess struct {
	testHub
	cmd       *exec.Cmd
	agentAddr string
	caPEM     []byte
}

// startHubProcess builds drover-hub and starts it on a fresh test bed
// database, logging warnings and errors only to a file in a temporary
// directory that is printed if the benchmark fails.
func startHubProcess(b *testing.B) *hubProcess {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "drover-hub")
	build := exec.Command("go", "build", "-o", bin, "./hub/cmd/drover-hub")
	build.Dir = filepath.Join("..", "..") // the module root, from e2e/loadtest
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build drover-hub: %v\n%s", err, out)
	}
	agentAddr, httpAddr := freeAddr(b), freeAddr(b)
	data := filepath.Join(dir, "data")
	logPath := filepath.Join(dir, "hub.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin,
		"--data-dir", data, "--database-url", testbed.Postgres(b),
		"--agent-addr", agentAddr, "--http-addr", httpAddr, "--hostnames", "127.0.0.1,localhost",
		"--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The hub must not outlive a benchmark binary that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start drover-hub: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if b.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				b.Logf("hub log:\n%s", log)
			}
		}
	})

	deadline := time.Now().Add(patience)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			b.Fatalf("drover-hub exited at start:\n%s", log)
		default:
		}
		if resp, err := http.Get("http://" + httpAddr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("drover-hub not healthy after %v", patience)
		}
		time.Sleep(100 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		b.Fatalf("read admin token: %v", err)
	}
	ca, err := os.ReadFile(filepath.Join(data, "pki", "ca.crt"))
	if err != nil {
		b.Fatalf("read the hub's CA: %v", err)
	}
	return &hubProcess{testHub: testHub{token: strings.TrimSpace(string(tok)), httpAddr: httpAddr}, cmd: cmd, agentAddr: agentAddr, caPEM: ca}
}

// rssKiB reads the hub's resident set size from /proc.
func (h *hubProcess) rssKiB(b *testing.B) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", h.cmd.Process.Pid))
	if err != nil {
		b.Fatalf("read the hub's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kib
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", h.cmd.Process.Pid)
	return 0
}

// freeAddr returns a loopback address with a port free a moment ago. The
// hub takes its addresses from flags, so the port is chosen here.
func freeAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// raiseOpenFileLimit makes room for one socket per agent.
func raiseOpenFileLimit(b *testing.B, atLeast uint64) {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("read the open-file limit: %v", err)
	}
	if lim.Cur >= atLeast {
		return
	}
	lim.Cur = atLeast
	lim.Max = max(lim.Max, atLeast)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("raise the open-file limit to %d (ulimit -n %d before running): %v", atLeast, atLeast, err)
	}
}
