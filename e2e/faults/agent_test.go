package faults

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// manyObjects is the size of the application an agent is killed in
	// the middle of applying.
	manyObjects = 300
	// manyNS is its namespace.
	manyNS = "many"
	// labelApplication is the label the agent puts on every object it
	// applies (agent/apply.LabelApplication).
	labelApplication = "drover.dev/application"
)

// TestAgentFaults runs one cluster's agent through a crash in the middle
// of an apply, a restart while the hub is down, and an outage of the
// cluster's Kubernetes API.
func TestAgentFaults(t *testing.T) {
	t.Parallel()
	b := newBed(t, testbed.Postgres(t), map[string]map[string]string{"edge-1": {"env": "prod"}})
	gen := b.repo.Commit(t, "many objects", manyFiles("a"))
	b.createApp(b.app("many", "apps/many"))
	b.waitSynced("many", "edge-1", gen)

	t.Run("crash mid-apply", func(t *testing.T) { agentCrashMidApply(t, b.with(t)) })
	t.Run("restart while the hub is down", func(t *testing.T) { agentRestartHubDown(t, b.with(t)) })
	t.Run("Kubernetes API down", func(t *testing.T) { kubeAPIDown(t, b.with(t)) })
}

// manyFiles is the "many" application with its ConfigMaps named
// PREFIX-NNN, all in one file so that a release replacing them is one
// commit.
func manyFiles(prefix string) map[string]string {
	var docs []string
	for i := range manyObjects {
		docs = append(docs, fmt.Sprintf(
			"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-%03d\n  namespace: %s\ndata:\n  value: %q\n", prefix, i, manyNS, prefix))
	}
	return map[string]string{
		"apps/many/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + manyNS + "\n",
		"apps/many/objects.yaml":   strings.Join(docs, "---\n"),
	}
}

// agentCrashMidApply: a release replaces every ConfigMap of "many" with
// new ones; the agent is killed with some of them created. After its
// restart the application converges, the inventory lists exactly what is
// in the cluster, and none of the old objects is left behind.
func agentCrashMidApply(t *testing.T, b *bed) {
	agent := b.agents["edge-1"]
	kube := b.clusters["edge-1"].Client(t)
	var commit, prefix string
	var applied int
	for attempt, p := range []string{"b", "c", "d"} {
		prefix = p
		// Watch before the release, so no creation is missed.
		ctx, cancel := context.WithCancel(context.Background())
		w, err := kube.CoreV1().ConfigMaps(manyNS).Watch(ctx, metav1.ListOptions{LabelSelector: labelApplication + "=many"})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		commit = b.repo.Commit(t, "many objects "+prefix, manyFiles(prefix))
		b.refresh("many")
		created := map[string]bool{}
		for ev := range w.ResultChan() {
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if ok && ev.Type == watch.Added && strings.HasPrefix(cm.Name, prefix+"-") {
				created[cm.Name] = true
			}
			if len(created) >= manyObjects/4 {
				agent.Kill(t)
				break
			}
		}
		cancel()
		if !agent.Process().Exited() {
			t.Fatalf("the watch of %s ended with %d new ConfigMaps seen", manyNS, len(created))
		}
		applied = len(b.liveObjects(kube, prefix))
		t.Logf("attempt %d: agent killed with %d of %d new ConfigMaps created", attempt+1, applied, manyObjects)
		if applied < manyObjects {
			break
		}
		// The whole release went in before the kill landed: the agent
		// starts again and the next release is tried.
		agent.Start(t)
		b.waitSynced("many", "edge-1", commit)
		if attempt == 2 {
			t.Fatal("three releases were applied completely before the agent could be killed mid-apply")
		}
	}
	// Even at the crash, everything in the cluster is in the inventory
	// (written before the objects), so nothing can be orphaned.
	inv := readInventory(t, kube, "many")
	pending := 0
	listed := map[string]bool{}
	for _, e := range inv.Entries {
		if e.Hash == "" {
			pending++
		}
		listed[e.Name] = true
	}
	for _, name := range b.liveObjects(kube, "") {
		if !listed[name] {
			t.Errorf("at the crash ConfigMap %s/%s is in the cluster but not in the inventory", manyNS, name)
		}
	}
	figure(t, "agent crash mid-apply: killed with %d of %d objects of the release created; inventory %d entries, %d not applied yet",
		applied, manyObjects, len(inv.Entries), pending)

	restarted := time.Now()
	agent.Start(t)
	b.waitSynced("many", "edge-1", commit)
	figure(t, "agent crash mid-apply: restart to Synced and Healthy on the hub: %v", time.Since(restarted).Round(time.Millisecond))

	// The cluster holds the release and nothing else; the inventory
	// lists exactly that.
	live := b.liveObjects(kube, "")
	if len(live) != manyObjects {
		t.Errorf("the cluster has %d ConfigMaps of many, want %d: %v", len(live), manyObjects, live)
	}
	for _, name := range live {
		if !strings.HasPrefix(name, prefix+"-") {
			t.Errorf("ConfigMap %s/%s of an earlier release is left in the cluster", manyNS, name)
		}
	}
	inv = readInventory(t, kube, "many")
	var names []string
	for _, e := range inv.Entries {
		if e.Hash == "" || e.Stale {
			t.Errorf("inventory entry %+v is not applied or stale after convergence", e)
		}
		if e.Kind == "ConfigMap" {
			names = append(names, e.Name)
		} else if e.Kind != "Namespace" || e.Name != manyNS {
			t.Errorf("inventory lists %+v, which the application does not have", e)
		}
	}
	sort.Strings(names)
	if strings.Join(names, ",") != strings.Join(live, ",") {
		t.Errorf("inventory lists %d ConfigMaps, the cluster has %d: inventory %v, cluster %v", len(names), len(live), names, live)
	}
}

// agentRestartHubDown: with the hub down, the agent is killed, a ConfigMap
// is changed by hand and the agent started again. From its stored
// assignment alone it keeps every object (deletes none) and reverts the
// change, before the hub is back.
func agentRestartHubDown(t *testing.T, b *bed) {
	agent := b.agents["edge-1"]
	kube := b.clusters["edge-1"].Client(t)
	before := b.liveObjects(kube, "")
	target := before[0]
	want := liveValue(t, kube, target)

	b.hub.Stop(t)
	agent.Kill(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := kube.CoreV1().ConfigMaps(manyNS).Watch(ctx, metav1.ListOptions{LabelSelector: labelApplication + "=many"})
	if err != nil {
		t.Fatal(err)
	}
	deleted := make(chan string, manyObjects)
	go func() {
		for ev := range w.ResultChan() {
			if cm, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Deleted {
				deleted <- cm.Name
			}
		}
	}()
	patch := []byte(`{"data":{"value":"changed by hand"}}`)
	if _, err := kube.CoreV1().ConfigMaps(manyNS).Patch(context.Background(), target, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	agent.Start(t)
	testbed.Eventually(t, "the hand change reverted with the hub down", waitLong, func() (bool, string) {
		v := liveValue(t, kube, target)
		return v == want, fmt.Sprintf("%s has value %q", target, v)
	})
	figure(t, "agent restart with the hub down: hand change to reverted: %v", time.Since(changed).Round(time.Millisecond))
	if p := b.hub.Process(); !p.Exited() {
		t.Fatal("the hub runs: this subtest needs it down")
	}
	if after := b.liveObjects(kube, ""); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("the agent restarted without its hub changed the application's objects: %d before, %d after", len(before), len(after))
	}
	select {
	case name := <-deleted:
		t.Errorf("the agent restarted without its hub deleted ConfigMap %s", name)
	default:
	}

	restarted := time.Now()
	b.hub.Start(t)
	b.waitSyncedAfter("many", "edge-1", "", changed)
	figure(t, "agent restart with the hub down: hub restart to current status: %v", time.Since(restarted).Round(time.Millisecond))
}

// retryInRE finds the delay in the agent's "reconcile failed" log lines.
var retryInRE = regexp.MustCompile(`retry_in=(\S+)`)

// kubeAPIDown: the cluster's API server stops. The agent reports why on
// the hub, retries with growing delays, and converges once the API server
// is back.
func kubeAPIDown(t *testing.T, b *bed) {
	cluster := b.clusters["edge-1"]
	agent := b.agents["edge-1"]
	failuresBefore := logCount(t, agent.Process(), `msg="reconcile failed" app=many`)

	cluster.StopAPIServer(t)
	stopped := time.Now()
	var down *droverv1.ApplicationStatus
	testbed.Eventually(t, "the hub saying why many is not synced", waitLong, func() (bool, string) {
		var err error
		if down, err = b.status("many", "edge-1"); err != nil {
			return false, err.Error()
		}
		return down.GetSync() == droverv1.SyncState_SYNC_STATE_FAILED && down.GetMessage() != "", fmt.Sprintf("hub says %v", down)
	})
	t.Logf("with the API server down the hub says: %s", down.GetMessage())
	if !strings.Contains(down.GetMessage(), "connection refused") {
		t.Errorf("the hub's message %q does not say the API server refuses connections", down.GetMessage())
	}
	// Three failed attempts show the delays growing: the backoff's third
	// delay (at least 4·base/2) exceeds its first (at most base).
	var delays []time.Duration
	testbed.Eventually(t, "three failed attempts", waitLong, func() (bool, string) {
		delays = retryDelays(t, agent.Process(), failuresBefore)
		return len(delays) >= 3, fmt.Sprintf("delays %v", delays)
	})
	if delays[2] <= delays[0] {
		t.Errorf("retry delays %v do not grow", delays)
	}
	figure(t, "Kubernetes API down: %d failed attempts in the outage, delays %v", len(delays), delays)

	cluster.StartAPIServer(t)
	restored := time.Now()
	b.waitSyncedAfter("many", "edge-1", "", restored)
	figure(t, "Kubernetes API down: outage %v; API server back to Synced and Healthy on the hub: %v; failed attempts in all: %d",
		restored.Sub(stopped).Round(time.Millisecond), time.Since(restored).Round(time.Millisecond), len(retryDelays(t, agent.Process(), failuresBefore)))
}

// retryDelays are the delays of the agent's failed reconciles of "many",
// after the first skip lines.
func retryDelays(t *testing.T, p *testbed.Process, skip int) []time.Duration {
	t.Helper()
	data, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	var out []time.Duration
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `msg="reconcile failed" app=many`) {
			continue
		}
		if n++; n <= skip {
			continue
		}
		m := retryInRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no retry_in in %q", line)
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("retry_in in %q: %v", line, err)
		}
		out = append(out, d)
	}
	return out
}

// liveObjects are the names of the ConfigMaps of "many" in the cluster
// whose names start with prefix, sorted.
func (b *bed) liveObjects(kube kubernetes.Interface, prefix string) []string {
	b.t.Helper()
	cms, err := kube.CoreV1().ConfigMaps(manyNS).List(context.Background(), metav1.ListOptions{LabelSelector: labelApplication + "=many"})
	if err != nil {
		b.t.Fatalf("list ConfigMaps: %v", err)
	}
	var out []string
	for _, cm := range cms.Items {
		if strings.HasPrefix(cm.Name, prefix) {
			out = append(out, cm.Name)
		}
	}
	sort.Strings(out)
	return out
}

// liveValue is the value of ConfigMap name of "many".
func liveValue(t *testing.T, kube kubernetes.Interface, name string) string {
	t.Helper()
	cm, err := kube.CoreV1().ConfigMaps(manyNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ConfigMap %s/%s: %v", manyNS, name, err)
	}
	return cm.Data["value"]
}

// inventory is the part of the agent's inventory of an application
// (agent/apply's inventory ConfigMap) the tests check.
type inventory struct {
	Commit  string `json:"commit"`
	Entries []struct {
		Kind      string `json:"kind"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Hash      string `json:"hash"`
		Stale     bool   `json:"stale"`
	} `json:"entries"`
}

// readInventory reads the agent's inventory of app from the cluster.
func readInventory(t *testing.T, kube kubernetes.Interface, app string) *inventory {
	t.Helper()
	cm, err := kube.CoreV1().ConfigMaps("drover-system").Get(context.Background(), "drover-inventory-"+app, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the inventory of %s: %v", app, err)
	}
	raw := []byte(cm.Data["inventory.json"])
	if gz, ok := cm.BinaryData["inventory.json.gz"]; ok {
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatalf("inventory of %s: %v", app, err)
		}
		if raw, err = io.ReadAll(r); err != nil {
			t.Fatalf("inventory of %s: %v", app, err)
		}
	}
	var inv inventory
	if err := json.Unmarshal(raw, &inv); err != nil {
		t.Fatalf("inventory of %s: %v", app, err)
	}
	return &inv
}
