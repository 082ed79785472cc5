package testbed

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// droverStartTimeout bounds the wait for a hub to serve or an agent to
	// start; generous, for a machine busy with other tests.
	droverStartTimeout = 2 * time.Minute
	// hubStartAttempts is how often StartHub picks new ports when one it
	// chose free was taken before the hub bound it.
	hubStartAttempts = 3
)

// Binaries are Drover's programs, built from this checkout once per test
// binary.
type Binaries struct{ Hub, Agent, Ctl string }

var droverBuild struct {
	once sync.Once
	bins Binaries
	err  error
}

// BinDirEnv names a directory holding drover-hub, drover-agent and
// droverctl already built from this checkout (`make test` and `make demo`
// build them into bin/ first), so test binaries need not each build them.
const BinDirEnv = "DROVER_BIN_DIR"

// StaticBuildEnv is the environment for building Drover's binaries as
// make build and the release image do: static, without cgo (with it the
// linker exports every symbol, which costs the agent 18 MiB of resident
// memory).
func StaticBuildEnv() []string { return append(os.Environ(), "CGO_ENABLED=0") }

// DroverBinaries returns drover-hub, drover-agent and droverctl: those in
// $DROVER_BIN_DIR, or else built from the module the test runs in (the
// first call builds them; later ones wait for it) into a directory that
// Main removes.
func DroverBinaries(t testing.TB) Binaries {
	t.Helper()
	if dir := os.Getenv(BinDirEnv); dir != "" {
		b := Binaries{Hub: filepath.Join(dir, "drover-hub"), Agent: filepath.Join(dir, "drover-agent"), Ctl: filepath.Join(dir, "droverctl")}
		for _, p := range []string{b.Hub, b.Agent, b.Ctl} {
			info, err := os.Stat(p)
			if err != nil || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
				t.Fatalf("testbed: %s=%s has no program %s: run `make build`, or unset %s to build them for the test", BinDirEnv, dir, filepath.Base(p), BinDirEnv)
			}
		}
		return b
	}
	requireMain(t)
	droverBuild.once.Do(func() {
		start := time.Now()
		droverBuild.bins, droverBuild.err = buildDrover()
		if droverBuild.err == nil {
			t.Logf("testbed: built drover-hub, drover-agent and droverctl in %s", since(start))
		}
	})
	if droverBuild.err != nil {
		t.Fatalf("testbed: %v", droverBuild.err)
	}
	return droverBuild.bins
}

func buildDrover() (Binaries, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return Binaries{}, fmt.Errorf("build Drover's binaries: %w", err)
	}
	// The test runs in its package's directory, inside the module; its
	// go.mod's directory is the root to build from.
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return Binaries{}, fmt.Errorf("build Drover's binaries: the test does not run inside the module (go env GOMOD: %q, %v)", gomod, err)
	}
	dir, err := os.MkdirTemp("", "drover-testbed-bin-")
	if err != nil {
		return Binaries{}, fmt.Errorf("build Drover's binaries: %w", err)
	}
	atExit(func() { os.RemoveAll(dir) })
	cmd := exec.Command(goBin, "build", "-o", dir+string(filepath.Separator),
		"./hub/cmd/drover-hub", "./hub/cmd/droverctl", "./agent/cmd/drover-agent")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = StaticBuildEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build Drover's binaries: %w\n%s", err, out)
	}
	return Binaries{
		Hub:   filepath.Join(dir, "drover-hub"),
		Agent: filepath.Join(dir, "drover-agent"),
		Ctl:   filepath.Join(dir, "droverctl"),
	}, nil
}

// HubOptions configure StartHub.
type HubOptions struct {
	// DatabaseURL is the hub's PostgreSQL (required), e.g. Postgres(t). It
	// goes to the hub in its environment, never in its arguments.
	DatabaseURL string
	// DataDir holds the hub's CA, keys and admin token; default a new
	// directory of the test's. Kept across restarts.
	DataDir string
	// AgentAddr and HTTPAddr are the listen addresses; default a free
	// 127.0.0.1 port each (a port 0 is replaced with a free one). Fixed
	// across restarts, so agents find the hub again.
	AgentAddr, HTTPAddr string
	// Hostnames go into the serving certificate; default 127.0.0.1 and
	// localhost.
	Hostnames []string
	// Args are extra flags, e.g. --offline-timeout 5s.
	Args []string
	// AdminToken is the initial admin token when the database has it
	// already, made by another replica: this hub makes none.
	AdminToken string
}

// HubProcess is a drover-hub process of a test.
type HubProcess struct {
	AgentAddr, HTTPAddr, DataDir string
	// CAFile is the hub's CA certificate, which agents trust.
	CAFile string
	// AdminToken is the initial admin API token.
	AdminToken string

	program
}

// program is a Drover program a helper runs, again after a stop or kill.
type program struct {
	name    string // for messages
	bin     string
	args    []string
	env     []string
	logPath string

	mu   sync.Mutex // guards the fields below
	proc *Process
}

// Process is the current (or last) process of the program.
func (p *program) Process() *Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc
}

// Kill sends SIGKILL to the program, as `kill -9` does, and waits for its
// end.
func (p *program) Kill(t testing.TB) {
	t.Helper()
	p.Process().Kill()
}

// Stop stops the program with SIGTERM (SIGKILL after a grace period) and
// waits for its end.
func (p *program) Stop(t testing.TB) {
	t.Helper()
	if !p.Process().Stop(stopGrace) {
		t.Logf("%s did not stop within %v of SIGTERM: killed", p.name, stopGrace)
	}
}

// run starts the program and makes it the current process.
func (p *program) run() (*Process, error) {
	proc, err := StartProcess(p.name, p.bin, p.args, p.env, "", p.logPath)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	return proc, nil
}

// StartHub starts drover-hub and returns once its /readyz answers 200 and
// it has written its admin token. It stops when t ends; its log's tail is
// shown when t failed.
func StartHub(t testing.TB, o HubOptions) *HubProcess {
	t.Helper()
	if o.DatabaseURL == "" {
		t.Fatal("testbed: StartHub: HubOptions.DatabaseURL is required")
	}
	bins := DroverBinaries(t)
	if o.DataDir == "" {
		o.DataDir = filepath.Join(t.TempDir(), "hub")
	}
	if len(o.Hostnames) == 0 {
		o.Hostnames = []string{"127.0.0.1", "localhost"}
	}
	h := &HubProcess{
		DataDir:    o.DataDir,
		CAFile:     filepath.Join(o.DataDir, "pki", "ca.crt"),
		AdminToken: o.AdminToken,
		program: program{
			name:    "drover-hub",
			bin:     bins.Hub,
			env:     droverEnv("DROVER_DATABASE_URL=" + o.DatabaseURL),
			logPath: filepath.Join(filepath.Dir(o.DataDir), "drover-hub.log"),
		},
	}
	stopAtCleanup(t, h.Process)
	for attempt := 1; ; attempt++ {
		var err error
		if h.AgentAddr, err = addrOrFree(o.AgentAddr); err != nil {
			t.Fatalf("testbed: StartHub: %v", err)
		}
		if h.HTTPAddr, err = addrOrFree(o.HTTPAddr); err != nil {
			t.Fatalf("testbed: StartHub: %v", err)
		}
		h.args = append([]string{
			"--data-dir", o.DataDir,
			"--agent-addr", h.AgentAddr,
			"--http-addr", h.HTTPAddr,
			"--hostnames", strings.Join(o.Hostnames, ","),
		}, o.Args...)
		err = h.start()
		p := h.Process()
		// Ports of our choosing may have been taken meanwhile by another
		// test binary: choose again. Given ports are the caller's problem.
		if err != nil && p != nil && p.bindFailed() && attempt < hubStartAttempts && !fixedPort(o.AgentAddr) && !fixedPort(o.HTTPAddr) {
			continue
		}
		if err != nil {
			t.Fatalf("testbed: %v", err)
		}
		break
	}
	if h.AdminToken == "" {
		tok, err := os.ReadFile(filepath.Join(o.DataDir, "admin-token"))
		if err != nil {
			t.Fatalf("testbed: drover-hub's admin token: %v", err)
		}
		h.AdminToken = strings.TrimSpace(string(tok))
	}
	return h
}

// start starts the process and waits until it serves.
func (h *HubProcess) start() error {
	p, err := h.run()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), droverStartTimeout)
	defer cancel()
	client := &http.Client{}
	tokenFile := filepath.Join(h.DataDir, "admin-token")
	return waitUntil(ctx, "drover-hub on "+h.HTTPAddr, []*Process{p}, func(ctx context.Context) (bool, error) {
		// Ready, not healthy: a replica started before the others is
		// healthy only once they join it.
		if ok, err := httpOK(ctx, client, "http://"+h.HTTPAddr+"/readyz"); !ok {
			return false, err
		}
		if h.AdminToken != "" {
			return true, nil // another replica made it
		}
		// Written before the hub serves; a hub that died in between is
		// caught by waitUntil.
		_, err := os.Stat(tokenFile)
		return err == nil, err
	})
}

// Start starts a stopped or killed hub again with the same data directory,
// addresses and flags, and waits until it serves.
func (h *HubProcess) Start(t testing.TB) {
	t.Helper()
	if p := h.Process(); p != nil && !p.Exited() {
		t.Fatalf("testbed: drover-hub (pid %d) still runs: stop or kill it first", p.Pid())
	}
	if err := h.start(); err != nil {
		t.Fatalf("testbed: restart: %v", err)
	}
}

// API calls the hub's JSON admin API as its initial admin: method on path
// (e.g. "/api/v1/clusters"), with in as the body unless nil, into out
// unless nil. A status other than 2xx is an error with the response body.
func (h *HubProcess) API(ctx context.Context, method, path string, in, out proto.Message) error {
	var body io.Reader
	if in != nil {
		b, err := protojson.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+h.HTTPAddr+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+h.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// JoinToken creates a single-use join token whose clusters start with
// labels, and returns its secret.
func (h *HubProcess) JoinToken(t testing.TB, labels map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var resp droverv1.CreateJoinTokenResponse
	if err := h.API(ctx, http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Ttl: "1h", Labels: labels}, &resp); err != nil {
		t.Fatalf("testbed: create a join token: %v", err)
	}
	return resp.GetToken()
}

// Cluster is the hub's record of a cluster.
func (h *HubProcess) Cluster(ctx context.Context, name string) (*droverv1.Cluster, error) {
	var resp droverv1.GetClusterResponse
	if err := h.API(ctx, http.MethodGet, "/api/v1/clusters/"+name, nil, &resp); err != nil {
		return nil, err
	}
	return resp.GetCluster(), nil
}

// Status is the hub's status of app on cluster; nil when it has none.
func (h *HubProcess) Status(ctx context.Context, app, cluster string) (*droverv1.ApplicationStatus, error) {
	var resp droverv1.GetApplicationResponse
	if err := h.API(ctx, http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil {
		return nil, err
	}
	for _, st := range resp.GetStatuses() {
		if st.GetCluster() == cluster {
			return st, nil
		}
	}
	return nil, nil
}

// Rollout is the current rollout of app.
func (h *HubProcess) Rollout(ctx context.Context, app string) (*droverv1.RolloutStatus, error) {
	var resp droverv1.GetRolloutResponse
	if err := h.API(ctx, http.MethodGet, "/api/v1/applications/"+app+"/rollout", nil, &resp); err != nil {
		return nil, err
	}
	return resp.GetRollout(), nil
}

// Eventually polls cond every 200 ms until it holds, and fails t with
// cond's last words if it does not within the given time. Tests assert
// outcomes; within only bounds how long a broken one takes to say so.
func Eventually(t testing.TB, what string, within time.Duration, cond func() (ok bool, last string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", within, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// AgentOptions configure StartAgent.
type AgentOptions struct {
	// Name is the cluster's name (--cluster-name).
	Name string
	// Kubeconfig is the cluster to manage.
	Kubeconfig string
	// HubAddr and HubCAFile reach the hub, e.g. HubProcess.AgentAddr and
	// HubProcess.CAFile.
	HubAddr, HubCAFile string
	// JoinToken registers the agent on its first start; it goes in the
	// agent's environment, never in its arguments.
	JoinToken string
	// StateDir is the agent's state; default a new directory of the
	// test's. Kept across restarts.
	StateDir string
	// Wrap is a command prefix, e.g. {"ip", "netns", "exec", "drv-x"}.
	Wrap []string
	// Args are extra flags, e.g. --heartbeat 1s --backoff-max 2s.
	Args []string
	// Env is added to the agent's environment.
	Env []string
}

// AgentProcess is a drover-agent process of a test.
type AgentProcess struct {
	Name, StateDir string

	program
}

// StartAgent starts drover-agent and returns once it runs: registered on
// its first start (so the hub must be reachable then), resumed from its
// state directory on later ones. It stops when t ends; its log's tail is
// shown when t failed.
func StartAgent(t testing.TB, o AgentOptions) *AgentProcess {
	t.Helper()
	if o.Name == "" {
		t.Fatal("testbed: StartAgent: AgentOptions.Name is required")
	}
	bins := DroverBinaries(t)
	dir := t.TempDir()
	if o.StateDir == "" {
		o.StateDir = filepath.Join(dir, "agent-"+o.Name)
	}
	args := []string{
		"--cluster-name", o.Name,
		"--kubeconfig", o.Kubeconfig,
		"--hub", o.HubAddr,
		"--hub-ca", o.HubCAFile,
		"--state-dir", o.StateDir,
	}
	args = append(args, o.Args...)
	a := &AgentProcess{
		Name:     o.Name,
		StateDir: o.StateDir,
		program: program{
			name:    "drover-agent " + o.Name,
			bin:     bins.Agent,
			args:    args,
			env:     droverEnv(append([]string{"DROVER_JOIN_TOKEN=" + o.JoinToken}, o.Env...)...),
			logPath: filepath.Join(dir, "drover-agent-"+o.Name+".log"),
		},
	}
	if len(o.Wrap) > 0 {
		a.bin = o.Wrap[0]
		a.args = append(append(append([]string{}, o.Wrap[1:]...), bins.Agent), args...)
	}
	stopAtCleanup(t, a.Process)
	a.Start(t)
	return a
}

// Start starts the agent (again, with the same state directory and flags)
// and waits until it runs.
func (a *AgentProcess) Start(t testing.TB) {
	t.Helper()
	if p := a.Process(); p != nil && !p.Exited() {
		t.Fatalf("testbed: drover-agent %s (pid %d) still runs: stop or kill it first", a.Name, p.Pid())
	}
	p, err := a.run()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), droverStartTimeout)
	defer cancel()
	// daemon.Start logs this once registered and resumed.
	err = waitUntil(ctx, "drover-agent "+a.Name+" to start", []*Process{p}, func(context.Context) (bool, error) {
		return p.LogContains("agent started"), nil
	})
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
}

// stopAtCleanup stops a helper's current process when t ends, after
// showing the tail of its log if t failed.
func stopAtCleanup(t testing.TB, current func() *Process) {
	t.Cleanup(func() {
		p := current()
		if p == nil {
			return
		}
		if t.Failed() {
			t.Logf("last lines of %s:\n%s", p.LogPath(), p.Tail(logTailLines))
		}
		p.Stop(stopGrace)
	})
}

// Kill sends SIGKILL to the process and its group, as `kill -9` does, and
// returns once it has been reaped.
func (p *Process) Kill() {
	p.stopping.Store(true)
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	<-p.done
}

// Signal sends sig to the process and its group, e.g. SIGSTOP to freeze
// it and SIGCONT to let it go on.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(-p.pid, sig); err != nil {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	return nil
}

// droverEnv is the environment of a Drover program: the test's, without
// DROVER_... variables (which would configure it behind the test's back),
// plus extra.
func droverEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DROVER_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// addrOrFree returns addr, with a free port when addr is empty (on
// 127.0.0.1) or its port is 0.
func addrOrFree(addr string) (string, error) {
	host := "127.0.0.1"
	if addr != "" {
		h, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", addr, err)
		}
		if port != "0" {
			return addr, nil
		}
		host = h
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return net.JoinHostPort(host, strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}

// fixedPort reports whether addr names a port of the caller's.
func fixedPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port != "0"
}
