package testbed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// deploymentTimeout bounds every wait on a Deployment; on a busy 2-core
// machine they take seconds.
const deploymentTimeout = 60 * time.Second

func TestClusters(t *testing.T) {
	started := time.Now()
	clusters := Clusters(t, 3)
	if len(clusters) != 3 {
		t.Fatalf("Clusters(t, 3) returned %d clusters", len(clusters))
	}
	clients := make([]kubernetes.Interface, len(clusters))
	names := map[string]bool{}
	for i, c := range clusters {
		clients[i] = c.Client(t)
		if names[c.Name] {
			t.Fatalf("cluster name %q returned twice", c.Name)
		}
		names[c.Name] = true
		if _, err := os.Stat(c.Kubeconfig); err != nil {
			t.Errorf("cluster %s: kubeconfig: %v", c.Name, err)
		}
	}

	// A Deployment in each cluster at once, as an agent per cluster would.
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Go(func() {
			ctx := t.Context()
			if err := applyDeployment(ctx, clients[i], "web", nil, 0); err != nil {
				errs[i] = fmt.Errorf("cluster %s: %w", c.Name, err)
				return
			}
			if err := waitDeployment(ctx, clients[i], "web", "Available", available); err != nil {
				errs[i] = fmt.Errorf("cluster %s: %w", c.Name, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clusters started and a 2-replica Deployment Available in each, %s after calling Clusters",
		len(clusters), time.Since(started).Round(time.Millisecond))

	t.Run("isolated", func(t *testing.T) {
		ctx := t.Context()
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "only-in-" + clusters[0].Name},
			Data:       map[string]string{"cluster": clusters[0].Name},
		}
		if _, err := clients[0].CoreV1().ConfigMaps(metav1.NamespaceDefault).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ConfigMap in %s: %v", clusters[0].Name, err)
		}
		if _, err := clients[0].CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, cm.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("get ConfigMap from %s, where it was created: %v", clusters[0].Name, err)
		}
		for i, c := range clusters[1:] {
			_, err := clients[i+1].CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, cm.Name, metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				t.Errorf("get ConfigMap %s from cluster %s: got error %v, want NotFound", cm.Name, c.Name, err)
			}
		}
	})

	t.Run("never ready", func(t *testing.T) {
		ctx := t.Context()
		client := clients[1]
		if err := applyDeployment(ctx, client, "stuck", map[string]string{NeverReadyLabel: "true"}, 8); err != nil {
			t.Fatal(err)
		}
		if err := applyDeployment(ctx, client, "fine", nil, 8); err != nil {
			t.Fatal(err)
		}
		if err := waitDeployment(ctx, client, "fine", "Available", available); err != nil {
			t.Error(err)
		}
		if err := waitDeployment(ctx, client, "stuck", "ProgressDeadlineExceeded", deadlineExceeded); err != nil {
			t.Fatal(err)
		}
		stuck, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Get(ctx, "stuck", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if stuck.Status.ReadyReplicas != 0 {
			t.Errorf("Deployment stuck has %d ready replicas, want 0", stuck.Status.ReadyReplicas)
		}
		pods, err := client.CoreV1().Pods(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: "app=stuck"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 2 {
			t.Errorf("Deployment stuck has %d pods, want 2", len(pods.Items))
		}
		for _, pod := range pods.Items {
			if pod.Spec.NodeName == "" || pod.Status.Phase != corev1.PodPending {
				t.Errorf("pod %s: node %q, phase %s; want scheduled and Pending", pod.Name, pod.Spec.NodeName, pod.Status.Phase)
			}
		}
	})

	t.Run("apiserver restart", func(t *testing.T) {
		c, client := clusters[2], clients[2]
		c.StopAPIServer(t)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		if err == nil {
			t.Fatal("the API answered while its apiserver was stopped")
		}
		t.Logf("with the apiserver stopped: %v", err)
		restarted := time.Now()
		c.StartAPIServer(t)

		// The client made before the restart works, and so does the rest of
		// the control plane, which lost its API too.
		if err := applyDeployment(t.Context(), client, "after-restart", nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := waitDeployment(t.Context(), client, "after-restart", "Available", available); err != nil {
			t.Fatal(err)
		}
		t.Logf("a Deployment applied after the restart was Available %s after StartAPIServer was called", since(restarted))
	})
}

// applyDeployment server-side applies a 2-replica Deployment whose pods
// carry app=name and podLabels; progressDeadlineSeconds 0 keeps the default.
func applyDeployment(ctx context.Context, client kubernetes.Interface, name string, podLabels map[string]string, progressDeadlineSeconds int32) error {
	selector := map[string]string{"app": name}
	labels := maps.Clone(selector)
	maps.Copy(labels, podLabels)
	spec := appsv1ac.DeploymentSpec().
		WithReplicas(2).
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(labels).
			WithSpec(corev1ac.PodSpec().WithContainers(
				corev1ac.Container().WithName("web").WithImage("nginx:1.25"))))
	if progressDeadlineSeconds != 0 {
		spec.WithProgressDeadlineSeconds(progressDeadlineSeconds)
	}
	d := appsv1ac.Deployment(name, metav1.NamespaceDefault).WithSpec(spec)
	_, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Apply(ctx, d,
		metav1.ApplyOptions{FieldManager: "drover-testbed-test", Force: true})
	if err != nil {
		return fmt.Errorf("apply Deployment %s: %w", name, err)
	}
	return nil
}

// waitDeployment polls the Deployment until cond holds, for at most
// deploymentTimeout, and says where it stood if it never did.
func waitDeployment(ctx context.Context, client kubernetes.Interface, name, want string, cond func(*appsv1.Deployment) bool) error {
	ctx, cancel := context.WithTimeout(ctx, deploymentTimeout)
	defer cancel()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	var last string
	for {
		d, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			if ctx.Err() == nil { // keep the last state seen, not the timeout itself
				last = err.Error()
			}
		case cond(d):
			return nil
		default:
			last = fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d, conditions %s",
				d.Generation, d.Status.ObservedGeneration, d.Status.Replicas, d.Status.UpdatedReplicas,
				d.Status.ReadyReplicas, d.Status.AvailableReplicas, conditions(d))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for Deployment %s to be %s: not within %s: %s", name, want, deploymentTimeout, last)
		case <-ticker.C:
		}
	}
}

func available(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation &&
		d.Status.UpdatedReplicas == want && d.Status.AvailableReplicas == want &&
		hasCondition(d, appsv1.DeploymentAvailable, corev1.ConditionTrue, "")
}

func deadlineExceeded(d *appsv1.Deployment) bool {
	return hasCondition(d, appsv1.DeploymentProgressing, corev1.ConditionFalse, "ProgressDeadlineExceeded")
}

func hasCondition(d *appsv1.Deployment, typ appsv1.DeploymentConditionType, status corev1.ConditionStatus, reason string) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == typ {
			return c.Status == status && (reason == "" || c.Reason == reason)
		}
	}
	return false
}

func conditions(d *appsv1.Deployment) string {
	var s []string
	for _, c := range d.Status.Conditions {
		s = append(s, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestCheckKubeBinaries(t *testing.T) {
	const fix = "run `make testbed` (builds them from the Go module proxy, ~6 min once)"
	tests := []struct {
		name        string
		executables []string // made in bin/
		others      []string // made in bin/ without the executable bit
		stages      bool
		missing     []string // "" when nothing is
	}{
		{
			name:    "nothing built",
			missing: []string{"bin/etcd", "bin/kube-apiserver", "bin/kube-controller-manager", "bin/kube-scheduler", "bin/kwok", "kwok-stages.yaml"},
		},
		{
			name:        "some missing",
			executables: []string{"etcd", "kube-controller-manager", "kube-scheduler"},
			others:      []string{"kwok"},
			stages:      true,
			missing:     []string{"bin/kube-apiserver", "bin/kwok"},
		},
		{
			name:        "stages missing",
			executables: kubeBinaries,
			missing:     []string{"kwok-stages.yaml"},
		},
		{
			name:        "complete",
			executables: kubeBinaries,
			stages:      true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, name := range tt.executables {
				writeFile(t, filepath.Join(dir, "bin", name), 0o755)
			}
			for _, name := range tt.others {
				writeFile(t, filepath.Join(dir, "bin", name), 0o644)
			}
			if tt.stages {
				writeFile(t, filepath.Join(dir, kubeStagesFile), 0o644)
			}

			err := checkKubeBinaries(dir)
			if len(tt.missing) == 0 {
				if err != nil {
					t.Fatalf("checkKubeBinaries: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkKubeBinaries: nil, want an error naming %v", tt.missing)
			}
			msg := err.Error()
			want := "(" + strings.Join(tt.missing, ", ") + " in " + dir + ")"
			if !strings.Contains(msg, want) || !strings.HasSuffix(msg, fix) {
				t.Errorf("checkKubeBinaries:\n%s\nwant it to contain %q and end with %q", msg, want, fix)
			}
		})
	}
}

func writeFile(t *testing.T, path string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte("x"), perm); err != nil {
		t.Fatal(err)
	}
}

func TestKubeTestbedDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/cache")
	t.Setenv("DROVER_TESTBED_DIR", "")
	if got, err := kubeTestbedDir(); err != nil || got != "/cache/drover-testbed/"+kubeToolchain {
		t.Errorf("kubeTestbedDir() = %q, %v; want the versioned directory in the user's cache", got, err)
	}
	t.Setenv("DROVER_TESTBED_DIR", "/somewhere/else")
	if got, err := kubeTestbedDir(); err != nil || got != "/somewhere/else" {
		t.Errorf("kubeTestbedDir() = %q, %v; want DROVER_TESTBED_DIR", got, err)
	}
}

func TestOptionsClusterNames(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		want    []string // nil: generated
		wantErr string
	}{
		{name: "generated", opts: Options{N: 3}},
		{name: "named", opts: Options{Names: []string{"east", "west"}}, want: []string{"east", "west"}},
		{name: "named with N", opts: Options{N: 2, Names: []string{"east", "west"}}, want: []string{"east", "west"}},
		{name: "none", opts: Options{}, wantErr: "N is 0"},
		{name: "N and Names disagree", opts: Options{N: 3, Names: []string{"east"}}, wantErr: "leave N 0"},
		{name: "duplicate", opts: Options{Names: []string{"east", "east"}}, wantErr: "given twice"},
		{name: "not a DNS label", opts: Options{Names: []string{"East_1"}}, wantErr: `cluster name "East_1"`},
		{name: "negative NodePods", opts: Options{N: 1, NodePods: -1}, wantErr: "NodePods is -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.clusterNames()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("clusterNames() error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("clusterNames(): %v", err)
			}
			if tt.want != nil {
				if !slices.Equal(got, tt.want) {
					t.Errorf("clusterNames() = %q, want %q", got, tt.want)
				}
				return
			}
			if len(got) != tt.opts.N {
				t.Fatalf("clusterNames() = %q, want %d names", got, tt.opts.N)
			}
			for _, name := range got {
				if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
					t.Errorf("generated name %q: %s", name, errs)
				}
			}
			again, _ := tt.opts.clusterNames()
			if got[0] == again[0] {
				t.Errorf("two calls generated the same name %q", got[0])
			}
		})
	}
}

// stagesFixture has the shape of kwok's stage files as build.sh
// concatenates them: documents after "---", a multi-line template, and an
// empty document.
const stagesFixture = `---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
      {{ end }}

---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
  delay:
    durationMilliseconds: 1000
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}

---
`

func TestWithNeverReadyStage(t *testing.T) {
	in := parseStages(t, []byte(stagesFixture))
	out, err := withNeverReadyStage([]byte(stagesFixture))
	if err != nil {
		t.Fatal(err)
	}
	got := parseStages(t, out)
	if len(got) != 2 {
		t.Fatalf("got %d stages, want 2:\n%s", len(got), out)
	}
	if !reflect.DeepEqual(got[0], in[0]) {
		t.Errorf("stage node-initialize changed:\n%s", out)
	}

	// The pod-ready stage gains exactly the expression, and nothing else changes.
	want := in[1]
	selector := want["spec"].(map[string]any)["selector"].(map[string]any)
	selector["matchExpressions"] = append(selector["matchExpressions"].([]any), map[string]any{
		"key":      `.metadata.labels["drover.test/never-ready"]`,
		"operator": "DoesNotExist",
	})
	if !reflect.DeepEqual(got[1], want) {
		t.Errorf("stage pod-ready:\n%s\nwant the fixture with one more expression", out)
	}

	again, err := withNeverReadyStage(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, out) {
		t.Errorf("a second pass changed the stages again:\n%s", again)
	}

	noPodReady := strings.Replace(stagesFixture, "name: pod-ready", "name: pod-something", 1)
	if _, err := withNeverReadyStage([]byte(noPodReady)); err == nil {
		t.Error("stages without pod-ready: no error")
	}
}

// parseStages decodes every non-empty document of a stages file.
func parseStages(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var stages []map[string]any
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return stages
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("parse stage: %v\n%s", err, doc)
		}
		if obj != nil {
			stages = append(stages, obj)
		}
	}
}

// recordingTB records Errorf calls instead of failing the test.
type recordingTB struct {
	testing.TB
	mu   sync.Mutex // guards errs
	errs []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errs)
}

func TestProcessExitReported(t *testing.T) {
	dir := t.TempDir()
	rec := &recordingTB{TB: t}
	b := &kubeBed{t: rec, dir: dir}
	logPath := filepath.Join(dir, "crash.log")

	// An earlier run's output in the same log is not part of this run's tail.
	if err := os.WriteFile(logPath, []byte("earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := StartProcess("crasher", "/bin/sh", []string{"-c", "for i in $(seq 1 40); do echo line $i; done; echo bind: address already in use; exit 3"}, nil, dir, logPath)
	if err != nil {
		t.Fatal(err)
	}
	b.watch(p)
	<-p.done
	deadline := time.Now().Add(10 * time.Second)
	for len(rec.errors()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	errs := rec.errors()
	if len(errs) != 1 {
		t.Fatalf("got %d reports of the exit, want 1: %q", len(errs), errs)
	}
	for _, want := range []string{"crasher exit status 3", "line 40", "bind: address already in use", logPath} {
		if !strings.Contains(errs[0], want) {
			t.Errorf("report %q does not contain %q", errs[0], want)
		}
	}
	for _, unwanted := range []string{"line 10\n", "earlier run"} {
		if strings.Contains(errs[0], unwanted) {
			t.Errorf("report %q contains %q, from beyond the last %d lines of this run", errs[0], unwanted, logTailLines)
		}
	}
	if !p.bindFailed() {
		t.Error("bindFailed() = false for a run that logged a bind failure")
	}

	// Processes the test bed stops, and exits after cleanup began, are not reported.
	stopped, err := StartProcess("stopped", "/bin/sh", []string{"-c", "trap '' TERM; echo ready; sleep 60"}, nil, dir, filepath.Join(dir, "stopped.log"))
	if err != nil {
		t.Fatal(err)
	}
	b.watch(stopped)
	// A SIGTERM that arrives before the shell set its trap would end it.
	for deadline := time.Now().Add(30 * time.Second); !stopped.LogContains("ready"); {
		if time.Now().After(deadline) {
			t.Fatal("the shell never got ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	stopped.Stop(200 * time.Millisecond) // it ignores SIGTERM, so this takes SIGKILL
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stop took %s", took)
	}
	// Usually SIGKILL ends it; under load the shell sometimes still takes
	// the SIGTERM (seen with the trap already set), which is as good an end
	// for stop. What matters is that stop returned and nothing is reported.
	if got := stopped.Status(); got != "signal: killed" && got != "signal: terminated" {
		t.Errorf("status of a stopped process = %q, want killed or terminated", got)
	}

	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	late, err := StartProcess("late", "/bin/sh", []string{"-c", "exit 1"}, nil, dir, filepath.Join(dir, "late.log"))
	if err != nil {
		t.Fatal(err)
	}
	b.watch(late)
	<-late.done
	time.Sleep(200 * time.Millisecond) // let the watchers run
	if errs := rec.errors(); len(errs) != 1 {
		t.Errorf("got %d reports, want only the crasher's: %q", len(errs), errs)
	}
}

// crashHelperEnv makes the test binary a helper that starts a child and
// dies without any cleanup.
const crashHelperEnv = "DROVER_TESTBED_CRASH_HELPER"

func TestChildDiesWithTestBinary(t *testing.T) {
	if os.Getenv(crashHelperEnv) != "" {
		p, err := StartProcess("sleeper", "/bin/sh", []string{"-c", "sleep 60"}, nil, t.TempDir(), os.DevNull)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("pid %d\n", p.pid)
		os.Exit(3) // as a crash would: no cleanup runs
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithTestBinary$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashHelperEnv+"=1")
	out, _ := cmd.Output()
	var pid int
	if _, err := fmt.Sscanf(string(out), "pid %d", &pid); err != nil {
		t.Fatalf("helper printed %q: %v", out, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d outlived the test binary that started it", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processAlive reports whether pid runs; a zombie does not.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// TestStartRetriesTakenPorts hands etcd and kube-apiserver a port that
// another process holds, as happens when another test binary picks the
// same free port first: each must start on new ports instead.
func TestStartRetriesTakenPorts(t *testing.T) {
	root, err := kubeTestbedDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkKubeBinaries(root); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port

	// Calls: 1 and 2 for etcd's first attempt, 3 and 4 for its second,
	// 5 for the apiserver's first, 6 for its second.
	var calls int
	b := &kubeBed{t: t, binDir: filepath.Join(root, "bin"), dir: t.TempDir()}
	b.freePort = func() (int, error) {
		calls++
		if calls == 1 || calls == 5 {
			return taken, nil
		}
		return freePort()
	}
	t.Cleanup(b.cleanup)
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()

	if err := b.startEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Name: "retry", bed: b, index: 1, dir: filepath.Join(b.dir, "retry")}
	b.clusters = []*Cluster{c}
	if err := c.prepare(); err != nil {
		t.Fatal(err)
	}
	if err := c.startFirstAPIServer(ctx); err != nil {
		t.Fatal(err)
	}

	if calls != 6 {
		t.Errorf("freePort called %d times, want 6", calls)
	}
	if c.port == taken || strings.HasSuffix(b.etcdURL, fmt.Sprint(":", taken)) {
		t.Errorf("started on the taken port %d: apiserver %d, etcd %s", taken, c.port, b.etcdURL)
	}
	for _, log := range []string{filepath.Join(b.dir, "etcd.log"), filepath.Join(c.dir, "kube-apiserver.log")} {
		data, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte("address already in use")) {
			t.Errorf("%s does not show the first attempt failing to bind", log)
		}
	}
	if _, err := c.Client(t).Discovery().ServerVersion(); err != nil {
		t.Errorf("the apiserver started on a new port does not answer: %v", err)
	}
}
