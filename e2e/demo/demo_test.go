// Package demo is `make demo`: Drover running on this machine as a user
// runs it. The real drover-hub with its embedded PostgreSQL, one real
// drover-agent process for each of three local Kubernetes clusters from
// the test bed, and a Git server holding an example application, all set
// up with the real droverctl.
//
// Under `make test`, TestDemo checks that the demo comes up, and that the
// commands its banner gives the user work, the image rollout included.
// With DROVER_DEMO=1 (make demo) it prints the banner instead and keeps
// everything running until Ctrl-C, then stops every process it started.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

const (
	// image is what the example application starts on; newImage is what
	// the banner has the user roll out.
	image    = "nginx:1.25"
	newImage = "nginx:1.27"
	// hubPollInterval is how often the hub resolves Git refs: short, so a
	// push shows up even without `droverctl app refresh`.
	hubPollInterval = 15 * time.Second
	// syncInterval is the application's sync interval on the agents:
	// the default, as a user's would be. Hand-made drift is put back
	// within seconds regardless, by the agents' watches.
	syncInterval = "5m"
	// convergeTimeout bounds each wait for the hub or the fleet; a loaded
	// 2-core machine needs a fraction of it.
	convergeTimeout = 5 * time.Minute
	// hubStarts is how often the hub is started on new ports when a port
	// chosen free was taken before the hub could bind it.
	hubStarts = 3
	// pollEvery paces every wait.
	pollEvery = 250 * time.Millisecond
)

// demoClusters are the clusters the demo registers and the labels their
// join tokens give them. The application goes to env=prod.
var demoClusters = []struct{ name, labels string }{
	{"prod-1", "env=prod"},
	{"prod-2", "env=prod"},
	{"staging", "env=staging"},
}

// prodClusters are the clusters the application is placed on.
var prodClusters = []string{"prod-1", "prod-2"}

// demo is everything TestDemo started.
type demo struct {
	t *testing.T
	// ctx ends when the test ends or, with DROVER_DEMO=1, on Ctrl-C.
	ctx  context.Context
	bins testbed.Binaries
	dir  string // the hub's data, the agents' state, droverctl's config, logs

	hub                 *testbed.Process
	agentAddr, httpAddr string
	token               string // the initial admin API token
	ctlConfig           string // droverctl's config file, written by login

	git      *testbed.Git
	repo     *testbed.Repo
	clone    string // a clone of repo for the user to push from
	clusters []*testbed.Cluster
	agents   map[string]*testbed.Process // by cluster name
	appFile  string                      // the Application's YAML
}

// TestDemo starts the demo and checks it works; see the package comment.
func TestDemo(t *testing.T) {
	interactive := os.Getenv("DROVER_DEMO") == "1"
	ctx := t.Context()
	if interactive {
		ctx = interruptContext(t)
		fmt.Println("Starting drover-hub with its embedded PostgreSQL, three local Kubernetes clusters,\n" +
			"a Git server and three drover-agents; this takes a minute or two...")
	}
	d := &demo{t: t, ctx: ctx, bins: testbed.DroverBinaries(t), agents: map[string]*testbed.Process{}}
	d.dir = demoDir(t, interactive)

	// The hub's first start (initdb) overlaps the clusters' start.
	d.startHub()
	d.git = testbed.GitServer(t)
	d.repo = d.git.CreateRepo(t, "fleet")
	first := d.repo.Commit(t, "web on "+image, testbed.ExampleApp(image))
	names := make([]string, len(demoClusters))
	for i, c := range demoClusters {
		names[i] = c.name
	}
	d.clusters = testbed.ClustersWithOptions(t, testbed.Options{Names: names})
	d.waitHub()
	d.login()
	d.startAgents()
	d.waitClusters()
	d.applyApp()
	d.waitRollout(first, image)
	d.cloneRepo()

	b := d.banner(first)
	if !interactive {
		// What the banner tells the user to run must work: run it, and
		// check the new image reaches the prod clusters.
		d.runSteps(b.tested())
		d.waitRollout(d.repo.Head(t), newImage)
		return
	}
	fmt.Print(b.text)
	d.waitForInterrupt()
}

// interruptContext returns a context that ends on SIGINT or SIGTERM.
// testbed.Main's own handler exits the binary at once, which suits tests,
// whose children die with them; the demo instead returns, so that its
// cleanups stop the agents, the clusters and the hub in order. Once the
// context has ended a second interrupt kills the binary and, by their
// parent-death signal, everything it started.
func interruptContext(t *testing.T) context.Context {
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	ctx, stop := signal.NotifyContext(t.Context(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx
}

// demoDir makes the directory of the demo's files, removed when the test
// ends, or kept to read when it failed.
func demoDir(t *testing.T, interactive bool) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "drover-demo-")
	if err != nil {
		t.Fatal(err)
	}
	// Run as root, the hub runs its PostgreSQL as user nobody, who must
	// traverse every directory above its data; MkdirTemp makes 0700.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the demo failed; its files and logs are kept in %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the demo's files: %v", err)
			return
		}
		if interactive {
			fmt.Printf("Drover demo stopped: every process it started has exited, and %s is removed.\n", dir)
		}
	})
	return dir
}

func (d *demo) dataDir() string   { return filepath.Join(d.dir, "hub") }
func (d *demo) hubURL() string    { return "http://" + d.httpAddr }
func (d *demo) tokenFile() string { return filepath.Join(d.dataDir(), "admin-token") }

// startHub starts drover-hub on new loopback ports, with its embedded
// PostgreSQL (no --database-url), without waiting for it.
func (d *demo) startHub() {
	d.agentAddr, d.httpAddr = testbed.FreeAddr(d.t), testbed.FreeAddr(d.t)
	d.hub = startProc(d.t, d.dir, "drover-hub", d.bins.Hub, []string{
		"--data-dir", d.dataDir(),
		"--agent-addr", d.agentAddr,
		"--http-addr", d.httpAddr,
		"--hostnames", "127.0.0.1",
		"--poll-interval", hubPollInterval.String(),
	}, childEnv())
}

// waitHub waits until the hub serves and has written the initial admin
// token. A port taken between freeAddr and the hub's bind makes the hub
// exit; it then starts again on new ports.
func (d *demo) waitHub() {
	t := d.t
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	var last error
	for starts := 1; ; {
		if last = d.hubReady(); last == nil {
			return
		}
		if d.hub.Exited() {
			if !d.hub.LogContains("address already in use") || starts == hubStarts {
				t.Fatalf("drover-hub did not start: %v", d.hub.ExitError())
			}
			starts++
			d.startHub()
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for drover-hub to serve on %s: %v\nlast lines of %s:\n%s",
				convergeTimeout, d.httpAddr, last, d.hub.LogPath(), d.hub.Tail(logTailLines))
		}
		d.sleep()
	}
}

// hubReady returns nil once /healthz answers ok and the admin token is
// written, reading the token into d.token.
func (d *demo) hubReady() error {
	ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.hubURL()+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /healthz: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	tok, err := os.ReadFile(d.tokenFile())
	if err != nil {
		return err
	}
	if d.token = strings.TrimSpace(string(tok)); d.token == "" {
		return fmt.Errorf("%s is empty", d.tokenFile())
	}
	return nil
}

// login saves the admin token in a droverctl config of the demo's own,
// as the banner tells the user to use it.
func (d *demo) login() {
	d.t.Helper()
	d.ctlConfig = filepath.Join(d.dir, "droverctl", "config.yaml")
	f, err := os.Open(d.tokenFile())
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	d.t.Log(strings.TrimSpace(d.ctl(f, "login", "--server", d.hubURL())))
}

// startAgents creates a join token for each set of labels and starts an
// agent for each cluster with it.
func (d *demo) startAgents() {
	t := d.t
	t.Helper()
	uses := map[string]int{}
	for _, c := range demoClusters {
		uses[c.labels]++
	}
	tokens := map[string]string{}
	for _, c := range demoClusters {
		if _, ok := tokens[c.labels]; ok {
			continue
		}
		args := []string{"token", "create", "--ttl", "1h", "--labels", c.labels, "--description", "make demo: " + c.labels + " clusters"}
		if uses[c.labels] > 1 {
			args = append(args, "--reusable")
		}
		tokens[c.labels] = strings.TrimSpace(d.ctl(nil, args...))
	}
	for i, c := range d.clusters {
		d.agents[c.Name] = startProc(t, d.dir, "agent-"+c.Name, d.bins.Agent, []string{
			"--hub", d.agentAddr,
			"--hub-ca", filepath.Join(d.dataDir(), "pki", "ca.crt"),
			"--cluster-name", c.Name,
			"--state-dir", filepath.Join(d.dir, "agent-"+c.Name),
			"--kubeconfig", c.Kubeconfig,
		}, childEnv("DROVER_JOIN_TOKEN="+tokens[demoClusters[i].labels]))
	}
}

// waitClusters waits until every cluster is registered, online and
// labelled as its join token says.
func (d *demo) waitClusters() {
	d.t.Helper()
	d.eventually("the three clusters online with their labels", func() (bool, string) {
		var resp droverv1.ListClustersResponse
		if err := d.api("/api/v1/clusters", &resp); err != nil {
			return false, err.Error()
		}
		got := map[string]*droverv1.Cluster{}
		for _, c := range resp.GetClusters() {
			got[c.GetName()] = c
		}
		for _, want := range demoClusters {
			c, ok := got[want.name]
			if !ok {
				return false, fmt.Sprintf("%s is not registered", want.name)
			}
			if labels := formatLabels(c.GetLabels()); !c.GetOnline() || labels != want.labels {
				return false, fmt.Sprintf("%s: online %t, labels %q (want online, %q)", want.name, c.GetOnline(), labels, want.labels)
			}
		}
		return true, ""
	})
}

// applyApp writes the Application and applies it with droverctl.
func (d *demo) applyApp() {
	d.t.Helper()
	d.appFile = filepath.Join(d.dir, "web.yaml")
	app := fmt.Sprintf(`apiVersion: drover.dev/v1
kind: Application
metadata:
  name: web
spec:
  source:
    repoURL: %s
    ref: main
    path: apps/web
  placement:
    selector:
      matchLabels: {env: prod}
  syncPolicy: {automated: true, prune: true, selfHeal: true, interval: %s}
`, d.repo.URL, syncInterval)
	if err := os.WriteFile(d.appFile, []byte(app), 0o644); err != nil {
		d.t.Fatal(err)
	}
	d.t.Log(strings.TrimSpace(d.ctl(nil, "apply", "-f", d.appFile)))
}

// waitRollout waits until the hub reports web Synced and Healthy at
// commit on the prod clusters and placed nowhere else, then checks the
// clusters themselves: the prod ones run img, staging runs nothing.
func (d *demo) waitRollout(commit, img string) {
	t := d.t
	t.Helper()
	d.eventually(fmt.Sprintf("web Synced and Healthy at %.7s on %s", commit, strings.Join(prodClusters, ", ")), func() (bool, string) {
		var resp droverv1.GetApplicationResponse
		if err := d.api("/api/v1/applications/web", &resp); err != nil {
			return false, err.Error()
		}
		placed := slices.Sorted(slices.Values(resp.GetPlacedClusters()))
		if !slices.Equal(placed, prodClusters) {
			return false, fmt.Sprintf("placed on %v", placed)
		}
		byCluster := map[string]*droverv1.ApplicationStatus{}
		for _, s := range resp.GetStatuses() {
			byCluster[s.GetCluster()] = s
		}
		for _, c := range prodClusters {
			s := byCluster[c]
			if s.GetCommit() != commit || s.GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED || s.GetHealth() != droverv1.Health_HEALTH_HEALTHY {
				return false, fmt.Sprintf("%s: %v (source error %q)", c, s, resp.GetSourceError())
			}
		}
		return true, ""
	})
	for _, c := range d.clusters {
		dep, err := c.Client(t).AppsV1().Deployments("web").Get(d.ctx, "nginx", metav1.GetOptions{})
		if !slices.Contains(prodClusters, c.Name) {
			if !apierrors.IsNotFound(err) {
				t.Fatalf("%s, not placed, has the nginx Deployment (err %v)", c.Name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: get the nginx Deployment: %v", c.Name, err)
		}
		if got := dep.Spec.Template.Spec.Containers[0].Image; got != img || dep.Status.AvailableReplicas != 2 {
			t.Fatalf("%s runs %s with %d available replicas; want %s with 2", c.Name, got, dep.Status.AvailableReplicas, img)
		}
	}
}

// cloneRepo clones the example repository for the user to change and push.
func (d *demo) cloneRepo() {
	d.t.Helper()
	d.clone = filepath.Join(d.dir, "fleet")
	d.run("git", "clone", "-q", d.repo.URL, d.clone)
	// An identity and no signing in the clone itself, so the banner's
	// commit works on a machine with no Git configuration.
	d.run("git", "-C", d.clone, "config", "user.name", "Drover demo")
	d.run("git", "-C", d.clone, "config", "user.email", "demo@drover.invalid")
	d.run("git", "-C", d.clone, "config", "commit.gpgSign", "false")
}

// runSteps runs the banner's commands as one shell script, as the user
// would type them, from the directory the banner's paths are relative to.
func (d *demo) runSteps(steps []step) {
	t := d.t
	t.Helper()
	var script strings.Builder
	script.WriteString("set -euxo pipefail\n")
	for _, s := range steps {
		script.WriteString(s.cmd + "\n")
	}
	out := d.run("bash", "-c", script.String())
	t.Logf("the banner's commands:\n%s", out)
}

// waitForInterrupt keeps the demo running until Ctrl-C, or until a part
// of it stops, which ends the demo with that part's log.
func (d *demo) waitForInterrupt() {
	t := d.t
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			fmt.Println("\nStopping the agents, the clusters, the Git server and the hub...")
			return
		case <-tick.C:
		}
		if err := d.exited(); err != nil {
			t.Error(err)
			return
		}
		if t.Failed() { // the test bed reports a cluster process that died
			return
		}
	}
}

// exited returns an error for the first of the demo's processes that has
// ended, or nil.
func (d *demo) exited() error {
	procs := []*testbed.Process{d.hub}
	for _, c := range demoClusters {
		if p := d.agents[c.name]; p != nil {
			procs = append(procs, p)
		}
	}
	for _, p := range procs {
		if p.Exited() {
			return p.ExitError()
		}
	}
	return nil
}

// eventually polls cond until it holds, failing the test with cond's last
// words after convergeTimeout, when a process of the demo ends, or on an
// interrupt.
func (d *demo) eventually(what string, cond func() (ok bool, last string)) {
	t := d.t
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if err := d.exited(); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s (logs in %s)", convergeTimeout, what, last, d.dir)
		}
		d.sleep()
	}
}

// sleep waits pollEvery, failing the test if interrupted meanwhile.
func (d *demo) sleep() {
	d.t.Helper()
	select {
	case <-d.ctx.Done():
		d.t.Fatal("interrupted while starting the demo")
	case <-time.After(pollEvery):
	}
}

// ctl runs droverctl with the demo's config and returns its standard
// output; a failure fails the test.
func (d *demo) ctl(stdin io.Reader, args ...string) string {
	d.t.Helper()
	cmd := exec.CommandContext(d.ctx, d.bins.Ctl, args...)
	cmd.Env = childEnv("DROVER_CONFIG=" + d.ctlConfig)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// The arguments hold no secret: tokens go by stdin and stdout.
		d.t.Fatalf("droverctl %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.String()
}

// run runs a program with the demo's environment, in the test's
// directory, and returns its combined output; a failure fails the test.
func (d *demo) run(name string, args ...string) string {
	d.t.Helper()
	cmd := exec.CommandContext(d.ctx, name, args...)
	cmd.Env = childEnv("DROVER_CONFIG="+d.ctlConfig, "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// api GETs path from the hub's JSON API with the admin token into out.
func (d *demo) api(path string, out proto.Message) error {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.hubURL()+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, out); err != nil {
		return fmt.Errorf("GET %s: decode: %w", path, err)
	}
	return nil
}

// formatLabels is "k=v,k2=v2" in key order, as --labels takes them.
func formatLabels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}
