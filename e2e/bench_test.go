package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The benchmarks of this file start real clusters, a hub and a built
// agent: they run only with -bench, never in make test.

// kubectlBinary is where the machines that run these benchmarks have
// kubectl; PATH is searched when it is not there.
const kubectlBinary = "/usr/bin/kubectl"

func kubectlPath(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(kubectlBinary); err == nil {
		return kubectlBinary
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		tb.Fatalf("kubectl is needed to compare Drover's apply with kubectl apply --server-side: it is neither at %s nor on PATH (%v); install kubectl 1.32 or later", kubectlBinary, err)
	}
	return p
}

// app200 is the 200 objects of BenchmarkAgentVsKubectl, all in namespace
// ns, by file name, one object per file: a Namespace, 60 Deployments of
// one replica, 60 Services and 79 ConfigMaps. The Namespace's file sorts
// first, since kubectl applies files in name order and does not put
// Namespaces first as Drover does.
func app200(ns string) map[string]string {
	files := map[string]string{
		"00-namespace.yaml": fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", ns),
	}
	for i := range 60 {
		name := fmt.Sprintf("app-%02d", i)
		files["10-deployment-"+name+".yaml"] = fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      containers:
      - name: app
        image: nginx:1.27.0
        ports:
        - containerPort: 80
`, name, ns)
		files["20-service-"+name+".yaml"] = fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  selector: {app: %[1]s}
  ports:
  - port: 80
    targetPort: 80
`, name, ns)
	}
	for i := range 79 {
		name := fmt.Sprintf("config-%02d", i)
		files["30-configmap-"+name+".yaml"] = fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: %s
  namespace: %s
data:
  value: "value %d"
`, name, ns, i)
	}
	return files
}

// writeApp200 writes the files of app200(ns) to dir.
func writeApp200(tb testing.TB, dir, ns string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for name, content := range app200(ns) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// app200InRepo is app200(ns) as the files of a repository under apps/ns.
func app200InRepo(ns string) map[string]string {
	out := map[string]string{}
	for name, content := range app200(ns) {
		out["apps/"+ns+"/"+name] = content
	}
	return out
}

// waitGone waits until the namespaces are deleted, so that the cluster's
// garbage collection does not run into the next measurement.
func waitGone(tb testing.TB, kube kubernetes.Interface, namespaces ...string) {
	tb.Helper()
	testbed.Eventually(tb, "namespaces "+strings.Join(namespaces, ", ")+" deleted", 3*time.Minute, func() (bool, string) {
		for _, ns := range namespaces {
			_, err := kube.CoreV1().Namespaces().Get(tb.Context(), ns, metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return false, fmt.Sprintf("namespace %s: get: %v", ns, err)
			}
		}
		return true, ""
	})
}

// BenchmarkAgentVsKubectl compares Drover with kubectl apply --server-side
// on the same 200 objects, each into a fresh namespace of one cluster, and
// says in its metric names what each figure times:
//
//   - agent-start-to-synced-ms: from starting the drover-agent process to
//     the instant the agent observed the new application Synced (the
//     status it reports to the hub carries that instant): the process
//     starts, discovers the API, connects to the hub, gets an assignment
//     waiting for it, fetches the pinned commit from the Git server,
//     renders and applies. The agent was registered before, and has the
//     repository in its Git cache, as an agent that restarts has.
//   - kubectl-ms: from starting the kubectl process to its exit, its
//     discovery cache filled before.
//   - ratio-agent-kubectl: the first over the second (target ≤ 0.3).
//   - sync-first-ms and sync-noop-ms: the agent's render and apply of a
//     directory already on disk, in this process, with no process start,
//     no hub and no fetch: the first sync, then the no-op resync of the
//     same directory once its Deployments are available (as the next
//     interval finds them); with the API requests of each
//     (sync-first-requests, sync-noop-requests), which their time
//     follows, and ratio-sync-noop, the second over the first (target
//     ≤ 0.1).
func BenchmarkAgentVsKubectl(b *testing.B) {
	kubectl := kubectlPath(b)
	c := testbed.ClustersWithOptions(b, testbed.Options{N: 1, NodePods: 500})[0]
	kube := c.Client(b)
	ctx := b.Context()
	dir := b.TempDir()
	cacheDir := filepath.Join(dir, "kubectl-cache")

	var requests atomic.Int64
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, n: &requests} })
	applier, err := apply.New(cfg, testlog.New(b), apply.Options{})
	if err != nil {
		b.Fatal(err)
	}
	r := render.Options{IsNamespaced: applier.IsNamespaced}
	policy := apply.Policy{Prune: true, SelfHeal: true}
	syncDir := func(app, root string) (*apply.Result, error) {
		objs, err := r.Render(ctx, root, &droverv1.AppAssignment{Name: app, Commit: "c1"})
		if err != nil {
			return nil, err
		}
		return applier.Sync(ctx, app, "c1", objs, policy)
	}
	runKubectl := func(args ...string) {
		b.Helper()
		args = append([]string{"--kubeconfig", c.Kubeconfig, "--cache-dir", cacheDir}, args...)
		if out, err := exec.CommandContext(ctx, kubectl, args...).CombinedOutput(); err != nil {
			b.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// The agent's side: a hub, a Git server, and the agent registered.
	git := testbed.GitServer(b)
	repo := git.CreateRepo(b, "bench")
	hub, api := startBenchHub(b, dir)
	caFile := filepath.Join(dir, "hub-ca.crt")
	if err := os.WriteFile(caFile, hub.CACertPEM(), 0o644); err != nil {
		b.Fatal(err)
	}
	labels := map[string]string{"bench": "agent-vs-kubectl"}
	var tok droverv1.CreateJoinTokenResponse
	api.do(b, http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Labels: labels}, &tok)
	e2e := benchAgent{b: b, api: api, repo: repo, labels: labels, cluster: c.Name, kube: kube}

	// Warm up every side with the same kinds in a namespace of its own.
	warm := filepath.Join(dir, "warm-up")
	writeApp200(b, warm, "warm-up")
	if _, err := syncDir("warm-up", warm); err != nil {
		b.Fatalf("warm-up sync: %v", err)
	}
	if err := applier.Delete(ctx, "warm-up"); err != nil {
		b.Fatal(err)
	}
	waitGone(b, kube, "warm-up")
	runKubectl("api-resources")
	e2e.prepare("agent-warm-up")
	e2e.agent = testbed.StartAgent(b, testbed.AgentOptions{
		Name:       c.Name,
		Kubeconfig: c.Kubeconfig,
		HubAddr:    hub.AgentAddr(),
		HubCAFile:  caFile,
		JoinToken:  tok.GetToken(),
	})
	e2e.waitSynced("agent-warm-up", time.Time{})
	e2e.remove("agent-warm-up")

	var first, noop, agentToSynced, kc time.Duration
	var firstRequests, noopRequests int64
	var i int
	for b.Loop() {
		i++
		lib := fmt.Sprintf("sync-%d", i)
		app := fmt.Sprintf("agent-%d", i)
		kns := fmt.Sprintf("kubectl-%d", i)
		libDir, kDir := filepath.Join(dir, lib), filepath.Join(dir, kns)
		b.StopTimer()
		writeApp200(b, libDir, lib)
		writeApp200(b, kDir, kns)
		e2e.prepare(app)
		b.StartTimer()

		requests.Store(0)
		start := time.Now()
		res, err := syncDir(lib, libDir)
		first += time.Since(start)
		firstRequests += requests.Load()
		if err != nil || res.Applied != 200 {
			b.Fatalf("first sync: %v, %+v", err, res)
		}

		b.StopTimer()
		testbed.WaitDeploymentsAvailable(b, kube, lib)
		b.StartTimer()
		requests.Store(0)
		start = time.Now()
		res, err = syncDir(lib, libDir)
		noop += time.Since(start)
		noopRequests += requests.Load()
		if err != nil || res.Skipped != 200 || res.Sync != droverv1.SyncState_SYNC_STATE_SYNCED {
			b.Fatalf("no-op resync: %v, %+v", err, res)
		}

		start = time.Now()
		e2e.agent.Start(b)
		agentToSynced += e2e.waitSynced(app, start).Sub(start)

		start = time.Now()
		runKubectl("apply", "--server-side", "-f", kDir)
		kc += time.Since(start)
		deps, err := kube.AppsV1().Deployments(kns).List(ctx, metav1.ListOptions{})
		if err != nil || len(deps.Items) != 60 {
			b.Fatalf("after kubectl apply: %v Deployments in %s, err %v; want 60", len(deps.Items), kns, err)
		}

		b.StopTimer()
		if err := applier.Delete(ctx, lib); err != nil {
			b.Fatal(err)
		}
		if err := kube.CoreV1().Namespaces().Delete(ctx, kns, metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		e2e.remove(app)
		waitGone(b, kube, lib, kns)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(ms(agentToSynced)/n, "agent-start-to-synced-ms")
	b.ReportMetric(ms(kc)/n, "kubectl-ms")
	b.ReportMetric(float64(agentToSynced)/float64(kc), "ratio-agent-kubectl")
	b.ReportMetric(ms(first)/n, "sync-first-ms")
	b.ReportMetric(ms(noop)/n, "sync-noop-ms")
	b.ReportMetric(float64(firstRequests)/n, "sync-first-requests")
	b.ReportMetric(float64(noopRequests)/n, "sync-noop-requests")
	b.ReportMetric(float64(noop)/float64(first), "ratio-sync-noop")
}

// benchAgent is the drover-agent side of BenchmarkAgentVsKubectl: an
// application per measurement, placed on the cluster while its agent is
// down, so that the agent finds it waiting when it starts.
type benchAgent struct {
	b       *testing.B
	api     *apiClient
	repo    *testbed.Repo
	labels  map[string]string
	cluster string
	kube    kubernetes.Interface
	agent   *testbed.AgentProcess
	commit  string
}

// prepare commits the 200 objects in namespace app under apps/app and
// creates the application app, and returns once the hub has resolved its
// release.
func (e *benchAgent) prepare(app string) {
	e.b.Helper()
	e.commit = e.repo.Commit(e.b, "the 200 objects of "+app, app200InRepo(app))
	e.api.do(e.b, http.MethodPost, "/api/v1/applications", &droverv1.Application{Name: app, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: e.repo.URL, Ref: "main", Path: "apps/" + app},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: e.labels}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
	}}, nil)
	e.api.do(e.b, http.MethodPost, "/api/v1/applications/"+app+"/refresh", nil, nil)
	testbed.Eventually(e.b, fmt.Sprintf("the release of %s at %.7s", app, e.commit), 3*time.Minute, func() (bool, string) {
		var resp droverv1.GetApplicationResponse
		if err := e.api.call(e.b.Context(), http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil {
			return false, err.Error()
		}
		rels := resp.GetReleases()
		return len(rels) > 0 && rels[0].GetCommit() == e.commit, fmt.Sprintf("releases %v, source error %q", rels, resp.GetSourceError())
	})
}

// waitSynced waits until the hub has the agent's report of app Synced at
// its commit, observed after after, and returns when the agent observed it.
func (e *benchAgent) waitSynced(app string, after time.Time) time.Time {
	e.b.Helper()
	var at time.Time
	testbed.Eventually(e.b, fmt.Sprintf("%s Synced at %.7s on %s", app, e.commit, e.cluster), 3*time.Minute, func() (bool, string) {
		var resp droverv1.GetApplicationResponse
		if err := e.api.call(e.b.Context(), http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil {
			return false, err.Error()
		}
		for _, s := range resp.GetStatuses() {
			if s.GetCluster() == e.cluster && s.GetCommit() == e.commit && s.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED {
				at = s.GetObservedAt().AsTime()
				return at.After(after), fmt.Sprintf("hub says %v", s)
			}
		}
		return false, fmt.Sprintf("statuses %v", resp.GetStatuses())
	})
	deps, err := e.kube.AppsV1().Deployments(app).List(e.b.Context(), metav1.ListOptions{})
	if err != nil || len(deps.Items) != 60 {
		e.b.Fatalf("the agent says %s is Synced, and the cluster has %d Deployments in it (err %v); want 60", app, len(deps.Items), err)
	}
	return at
}

// remove deletes the application, waits until the agent has pruned its
// objects, and stops the agent.
func (e *benchAgent) remove(app string) {
	e.b.Helper()
	e.api.do(e.b, http.MethodDelete, "/api/v1/applications/"+app, nil, nil)
	waitGone(e.b, e.kube, app)
	e.agent.Stop(e.b)
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }

// countingTransport counts the requests sent to the API server.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// BenchmarkAgentIdleMemory measures the resident memory of a real
// drover-agent process, with its default configuration, that manages 10
// small applications on one cluster, watching their objects for drift (one
// watch per kind), and has nothing left to do: built
// from this tree, registered with an in-process hub, every application
// Synced and Healthy, then idle for 10 s before each reading of
// /proc/PID/status. Five applications are plain YAML, five are Helm
// charts from the same Git repository, rendered by the agent with Helm's
// template engine, so the figure includes what Helm costs the agent. It
// reports the largest VmRSS read and the peak (VmHWM), in MiB (target ≤ 60).
func BenchmarkAgentIdleMemory(b *testing.B) {
	const apps, charts = 10, 5
	dir := b.TempDir()
	agentBin := buildAgent(b, dir)

	git := testbed.GitServer(b)
	repo := git.CreateRepo(b, "idle")
	files := map[string]string{}
	for i := range apps - charts {
		ns := fmt.Sprintf("idle-%02d", i)
		files[fmt.Sprintf("apps/%s/app.yaml", ns)] = fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: %[1]s
data:
  greeting: hello from %[1]s
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27.0
        envFrom:
        - configMapRef: {name: settings}
`, ns)
	}
	for i := apps - charts; i < apps; i++ {
		for name, content := range idleChart(fmt.Sprintf("idle-%02d", i)) {
			files[fmt.Sprintf("apps/idle-%02d/%s", i, name)] = content
		}
	}
	commit := repo.Commit(b, "five small applications and five charts", files)

	c := testbed.ClustersWithOptions(b, testbed.Options{N: 1})[0]
	hub, api := startBenchHub(b, dir)
	labels := map[string]string{"bench": "idle"}
	caFile, token := joinBenchHub(b, dir, hub, api, labels)
	names := make([]string, apps)
	for i := range apps {
		names[i] = fmt.Sprintf("idle-%02d", i)
		var rnd *droverv1.Render
		if i >= apps-charts {
			rnd = &droverv1.Render{Type: "helm", Namespace: names[i]}
		}
		api.do(b, http.MethodPost, "/api/v1/applications", &droverv1.Application{Name: names[i], Spec: &droverv1.ApplicationSpec{
			Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "apps/" + names[i]},
			Render:     rnd,
			Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: labels}},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
		}}, nil)
	}

	agent := startBenchAgent(b, agentBin, dir, hub, caFile, token, c)
	testbed.Eventually(b, fmt.Sprintf("%d applications Synced and Healthy at %.7s on %s", apps, commit, c.Name), 3*time.Minute, func() (bool, string) {
		for _, app := range names {
			var resp droverv1.GetApplicationResponse
			if err := api.call(b.Context(), http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil {
				return false, err.Error()
			}
			var s *droverv1.ApplicationStatus
			for _, st := range resp.GetStatuses() {
				if st.GetCluster() == c.Name {
					s = st
				}
			}
			if s.GetCommit() != commit || s.GetSync() != droverv1.SyncState_SYNC_STATE_SYNCED || s.GetHealth() != droverv1.Health_HEALTH_HEALTHY {
				return false, fmt.Sprintf("%s: hub says %v", app, s)
			}
		}
		return true, ""
	})

	// The largest reading, and what it is made of: anonymous memory (the
	// Go heap, stacks and runtime) and file pages (mostly the binary).
	// Where the kernel maps file pages in large folios (ext4 on Linux
	// 6.18 here), most of the binary's text and read-only data is
	// resident whatever code ran: the file pages follow the binary's
	// size more than the code the agent runs, and vary by ±2 MiB from one
	// run to the next.
	var peak map[string]int64
	for b.Loop() {
		time.Sleep(10 * time.Second)
		st, err := readProcStatus(agent.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		if peak == nil || st["VmRSS"] > peak["VmRSS"] {
			peak = st
		}
	}
	mib := func(name string) float64 { return float64(peak[name]) / (1 << 20) }
	b.ReportMetric(mib("VmRSS"), "rss-MiB")
	b.ReportMetric(mib("VmHWM"), "hwm-MiB")
	b.ReportMetric(mib("RssAnon"), "rss-anon-MiB")
	b.ReportMetric(mib("RssFile"), "rss-file-MiB")
	if strings.Contains(os.Getenv("GODEBUG"), "gctrace") {
		// The agent inherits GODEBUG: show its last collections, to see
		// how much of its memory is live heap.
		b.Logf("drover-agent's log ends with:\n%s", tail(filepath.Join(dir, "agent.log"), 2<<10))
	}
}

// servicesChart is a chart of 200 objects, 50 services of four objects each
// (ConfigMap, Service, Deployment, ServiceAccount), written as charts with
// many services are: a range over a list, names and labels from helpers.
func servicesChart() map[string]string {
	return map[string]string{
		"Chart.yaml":  "apiVersion: v2\nname: shop\nversion: 2.1.0\nappVersion: \"2.1.0\"\n",
		"values.yaml": "services: 50\nreplicaCount: 2\nimage:\n  repository: registry.example/shop\n  tag: \"\"\nresources:\n  requests:\n    cpu: 50m\n    memory: 64Mi\n",
		"templates/_helpers.tpl": `{{- define "shop.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shop.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
`,
		"templates/services.yaml": `{{- range $i := until (int .Values.services) }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "shop.fullname" $ }}-{{ $i }}
  labels:
    {{- include "shop.labels" $ | nindent 4 }}
data:
  index: {{ $i | quote }}
  listen: {{ printf ":%d" (add 8000 $i) | quote }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "shop.fullname" $ }}-{{ $i }}
  labels:
    {{- include "shop.labels" $ | nindent 4 }}
spec:
  selector:
    app.kubernetes.io/component: svc-{{ $i }}
  ports:
  - port: 80
    targetPort: {{ add 8000 $i }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "shop.fullname" $ }}-{{ $i }}
  labels:
    {{- include "shop.labels" $ | nindent 4 }}
spec:
  replicas: {{ $.Values.replicaCount }}
  selector:
    matchLabels:
      app.kubernetes.io/component: svc-{{ $i }}
  template:
    metadata:
      labels:
        app.kubernetes.io/component: svc-{{ $i }}
    spec:
      serviceAccountName: {{ include "shop.fullname" $ }}-{{ $i }}
      containers:
      - name: app
        image: "{{ $.Values.image.repository }}:{{ $.Values.image.tag | default $.Chart.AppVersion }}"
        resources:
          {{- toYaml $.Values.resources | nindent 10 }}
        envFrom:
        - configMapRef:
            name: {{ include "shop.fullname" $ }}-{{ $i }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "shop.fullname" $ }}-{{ $i }}
  labels:
    {{- include "shop.labels" $ | nindent 4 }}
{{- end }}
`,
	}
}

// renderedCount is droverctl render's closing line on standard error.
var renderedCount = regexp.MustCompile(`(?m)^(\d+) objects of `)

// BenchmarkDroverctlRender times `droverctl render APP --cluster C` of a
// chart of 200 objects in Git, as an operator runs it: a droverctl built
// statically from this tree, run as a process from its start to its exit,
// against a real hub (in process, on the test bed's PostgreSQL) that
// resolves the cluster's assignment, a real Git server it fetches the
// chart from, and Helm's render. It reports ns/op and the objects printed.
func BenchmarkDroverctlRender(b *testing.B) {
	dir := b.TempDir()
	ctlBin := buildCommand(b, dir, "hub/cmd/droverctl")
	git := testbed.GitServer(b)
	repo := git.CreateRepo(b, "shop")
	files := map[string]string{}
	for name, content := range servicesChart() {
		files["charts/shop/"+name] = content
	}
	commit := repo.Commit(b, "the shop chart", files)

	hub, api := startBenchHub(b, dir)
	labels := map[string]string{"bench": "render"}
	const cluster = "render-1"
	tok, _, err := hub.Store().CreateJoinToken(b.Context(), &droverv1.CreateJoinTokenRequest{Labels: labels}, "bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := hub.Store().CreateClusterWithJoinToken(b.Context(), tok, cluster, "serial-"+cluster, time.Now()); err != nil {
		b.Fatal(err)
	}
	hub.Controller().ClusterChanged(b.Context(), cluster)
	api.do(b, http.MethodPost, "/api/v1/applications", &droverv1.Application{Name: "shop", Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: "charts/shop"},
		Render:    &droverv1.Render{Type: "helm", Namespace: "shop"},
		Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: labels}},
	}}, nil)
	testbed.Eventually(b, fmt.Sprintf("the release of shop at %.7s", commit), 3*time.Minute, func() (bool, string) {
		var resp droverv1.GetApplicationResponse
		if err := api.call(b.Context(), http.MethodGet, "/api/v1/applications/shop", nil, &resp); err != nil {
			return false, err.Error()
		}
		rels := resp.GetReleases()
		return len(rels) > 0 && rels[0].GetCommit() == commit, fmt.Sprintf("releases %v, source error %q", rels, resp.GetSourceError())
	})

	env := append(os.Environ(), "DROVER_SERVER="+api.base, "DROVER_TOKEN="+api.token, "DROVER_CONFIG="+filepath.Join(dir, "no-config"))
	var objects int
	for b.Loop() {
		cmd := exec.CommandContext(b.Context(), ctlBin, "render", "shop", "--cluster", cluster)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("droverctl render shop --cluster %s: %v\n%s", cluster, err, stderr.String())
		}
		m := renderedCount.FindStringSubmatch(stderr.String())
		if m == nil {
			b.Fatalf("droverctl render did not say how many objects it printed:\n%s", stderr.String())
		}
		objects, _ = strconv.Atoi(m[1])
		if docs := strings.Count(stdout.String(), "---\n"); docs != objects {
			b.Fatalf("droverctl render printed %d objects and says %d", docs, objects)
		}
	}
	if objects != 200 {
		b.Fatalf("droverctl render printed %d objects of the shop chart, want 200", objects)
	}
	b.ReportMetric(float64(objects), "objects/op")
}

// idleChart is a small chart as charts are written, in the same
// namespace as BenchmarkAgentIdleMemory's plain applications and with the
// same objects: named and labelled by helpers, values through toYaml,
// quote and default, and a checksum of the ConfigMap on the pod template.
func idleChart(name string) map[string]string {
	return map[string]string{
		"Chart.yaml":  fmt.Sprintf("apiVersion: v2\nname: %s\nversion: 0.1.0\nappVersion: \"1.27.0\"\n", name),
		"values.yaml": "greeting: hello\nimage:\n  repository: nginx\n  tag: \"\"\nreplicaCount: 1\nresources:\n  requests:\n    cpu: 10m\n    memory: 16Mi\n",
		"templates/_helpers.tpl": `{{- define "idle.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
`,
		"templates/namespace.yaml": `apiVersion: v1
kind: Namespace
metadata:
  name: {{ .Release.Namespace }}
  labels:
    {{- include "idle.labels" . | nindent 4 }}
`,
		"templates/configmap.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "idle.labels" . | nindent 4 }}
data:
  greeting: {{ printf "%s from %s" .Values.greeting .Release.Namespace | quote }}
`,
		"templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "idle.labels" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    spec:
      containers:
      - name: web
        image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
        resources:
          {{- toYaml .Values.resources | nindent 10 }}
        envFrom:
        - configMapRef: {name: settings}
`,
	}
}

// buildAgent builds drover-agent from this tree into dir.
func buildAgent(tb testing.TB, dir string) string {
	tb.Helper()
	return buildCommand(tb, dir, "agent/cmd/drover-agent")
}

// buildCommand builds the command in pkg (relative to the module) from
// this tree into dir, statically as make build does, and returns its path.
func buildCommand(tb testing.TB, dir, pkg string) string {
	tb.Helper()
	name := path.Base(pkg)
	goBin, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("the go command is needed to build %s: %v", name, err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(tb.Context(), goBin, "build", "-o", bin, "github.com/drover-dev/drover/"+pkg)
	cmd.Env = testbed.StaticBuildEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	return bin
}

// startBenchAgent starts the agent binary for cluster c, joining hub with
// token, its state and log in dir.
func startBenchAgent(b *testing.B, agentBin, dir string, hub *server.Hub, caFile, token string, c *testbed.Cluster) *exec.Cmd {
	b.Helper()
	return startAgentProcess(b, agentBin, filepath.Join(dir, "agent.log"),
		"--hub", hub.AgentAddr(),
		"--hub-ca", caFile,
		"--join-token", token,
		"--cluster-name", c.Name,
		"--state-dir", filepath.Join(dir, "agent-state"),
		"--kubeconfig", c.Kubeconfig,
	)
}

// startAgentProcess starts the agent binary with args, its output in
// logFile, and stops it (SIGTERM, then SIGKILL to its process group) when
// the benchmark ends. It dies with the test binary.
func startAgentProcess(tb testing.TB, bin, logFile string, args ...string) *exec.Cmd {
	tb.Helper()
	logOut, err := os.Create(logFile)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logOut, logOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logOut.Close()
		tb.Fatalf("start drover-agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		defer logOut.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				tb.Logf("drover-agent exited: %v", err)
			}
		case <-time.After(15 * time.Second):
			tb.Logf("drover-agent did not stop within 15s of SIGTERM: killing it")
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if tb.Failed() {
			tb.Logf("drover-agent's log:\n%s", tail(logFile, 8<<10))
		}
	})
	return cmd
}

// tail returns the last n bytes of a file, or why it cannot.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return err.Error()
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// readProcStatus returns the memory figures of /proc/PID/status, in
// bytes, by name ("VmRSS", "VmHWM", "RssAnon", "RssFile").
func readProcStatus(pid int) (map[string]int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("read the agent's status: %w", err)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		// "VmRSS:	   41236 kB"
		name, value, ok := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(value)
		if !ok || len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/status: %s: %w", pid, name, err)
		}
		out[name] = kb << 10
	}
	for _, name := range []string{"VmRSS", "VmHWM", "RssAnon", "RssFile"} {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("/proc/%d/status has no %s", pid, name)
		}
	}
	return out, nil
}

// joinBenchHub writes hub's CA certificate into dir and makes a join
// token for a cluster with labels: what an agent's first start needs.
func joinBenchHub(tb testing.TB, dir string, hub *server.Hub, api *apiClient, labels map[string]string) (caFile, token string) {
	tb.Helper()
	caFile = filepath.Join(dir, "hub-ca.crt")
	if err := os.WriteFile(caFile, hub.CACertPEM(), 0o644); err != nil {
		tb.Fatal(err)
	}
	var tok droverv1.CreateJoinTokenResponse
	api.do(tb, http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Labels: labels}, &tok)
	return caFile, tok.GetToken()
}

// startBenchHub starts a hub in-process, as newFleet does, on ports of
// its own choosing, and returns it with an admin API client.
func startBenchHub(tb testing.TB, dir string) (*server.Hub, *apiClient) {
	tb.Helper()
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "hub")
	cfg.DatabaseURL = testbed.Postgres(tb)
	cfg.AgentAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1"}
	cfg.PollInterval = 5 * time.Second
	h, err := server.Start(context.Background(), cfg, testlog.New(tb).With("component", "hub"), io.Discard)
	if err != nil {
		tb.Fatalf("start hub: %v", err)
	}
	tb.Cleanup(func() {
		if err := h.Close(); err != nil {
			tb.Logf("hub close: %v", err)
		}
	})
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		tb.Fatal(err)
	}
	return h, &apiClient{base: "http://" + h.HTTPAddr(), token: strings.TrimSpace(string(tok))}
}
