package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// settingsConfigMap is a ConfigMap beside the example application, for
// drift on an object without a generation.
func settingsConfigMap(ns string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: %s\ndata:\n  greeting: hello\n", ns)
}

// hourly is an application of apps/NAME on clusters labelled env=prod,
// synced again only every hour: anything healed sooner was healed by the
// agent's watches, not by its interval.
func hourly(repoURL, name string, selfHeal bool) *droverv1.Application {
	return &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "apps/" + name},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: selfHeal, Interval: "1h"},
	}}
}

// TestSelfHealWithinTheInterval: a real drover-agent reverts hand changes
// to what it applied without waiting for its sync interval, leaves a
// quiet application alone while its status moves, and with selfHeal off
// reports the drift without reverting it.
func TestSelfHealWithinTheInterval(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "selfheal")
	files := testbed.ExampleAppIn("heal", "nginx:1.27.0")
	files["apps/heal/configmap.yaml"] = settingsConfigMap("heal")
	for k, v := range testbed.ExampleAppIn("report", "nginx:1.27.0") {
		files[k] = v
	}
	commit := repo.Commit(t, "two applications", files)

	const cluster = "edge-1"
	fl := newFleet(t, map[string]map[string]string{cluster: {"env": "prod"}}, cluster)
	fl.do(http.MethodPost, "/api/v1/applications", hourly(repo.URL, "heal", true), nil)
	fl.do(http.MethodPost, "/api/v1/applications", hourly(repo.URL, "report", false), nil)
	fl.waitHealthy("heal", cluster, commit)
	fl.waitHealthy("report", cluster, commit)
	kube := fl.kube(cluster)

	watchSyncs := func(app string) float64 {
		t.Helper()
		v, ok := testbed.MetricValue(fl.agentMetrics(cluster), "drover_agent_watch_syncs_total", map[string]string{"application": app})
		if !ok {
			t.Fatalf("drover_agent_watch_syncs_total{application=%q} missing: %s's objects are not watched", app, app)
		}
		return v
	}

	t.Run("a quiet application is not synced", func(t *testing.T) {
		// Its Deployment's status moved as it became ready, and moves
		// again as a pod is replaced: status updates only, which change
		// nothing Drover applied.
		d, err := kube.AppsV1().Deployments("heal").Get(t.Context(), "nginx", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods, err := kube.CoreV1().Pods("heal").List(t.Context(), metav1.ListOptions{LabelSelector: "app=nginx"})
		if err != nil || len(pods.Items) == 0 {
			t.Fatalf("heal's pods: %v (err %v)", pods, err)
		}
		if err := kube.CoreV1().Pods("heal").Delete(t.Context(), pods.Items[0].Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testbed.Eventually(t, "heal's Deployment status updated and 2 replicas available again", waitConverge, func() (bool, string) {
			now, err := kube.AppsV1().Deployments("heal").Get(t.Context(), "nginx", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return now.ResourceVersion != d.ResourceVersion && now.Status.AvailableReplicas == 2 && now.Generation == d.Generation,
				fmt.Sprintf("resourceVersion %s (was %s), generation %d (was %d), status %+v", now.ResourceVersion, d.ResourceVersion, now.Generation, d.Generation, now.Status)
		})
		// Longer than the watches wait before asking for a sync.
		time.Sleep(5 * time.Second)
		if n := watchSyncs("heal"); n != 0 {
			t.Errorf("the watches asked for %v syncs of heal, want none", n)
		}
	})

	t.Run("hand changes are reverted", func(t *testing.T) {
		for _, tc := range []handChange{
			scaleByHand(kube, "heal"),
			{
				name: "kubectl set image",
				change: func(ctx context.Context) error {
					patch := []byte(`{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.99.0"}]}}}}`)
					_, err := kube.AppsV1().Deployments("heal").Patch(ctx, "nginx", types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: "kubectl-set"})
					return err
				},
				healed: func(ctx context.Context) (bool, string) {
					d, err := kube.AppsV1().Deployments("heal").Get(ctx, "nginx", metav1.GetOptions{})
					if err != nil {
						return false, err.Error()
					}
					img := d.Spec.Template.Spec.Containers[0].Image
					return img == "nginx:1.27.0", "image " + img
				},
			},
			editByHand(kube, "heal"),
			{
				name: "ConfigMap deleted",
				change: func(ctx context.Context) error {
					return kube.CoreV1().ConfigMaps("heal").Delete(ctx, "settings", metav1.DeleteOptions{})
				},
				healed: func(ctx context.Context) (bool, string) { return greeting(ctx, kube.CoreV1().ConfigMaps("heal").Get) },
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := tc.change(t.Context()); err != nil {
					t.Fatal(err)
				}
				testbed.Eventually(t, tc.name+" reverted in heal (interval 1h)", waitConverge, func() (bool, string) {
					ctx, cancel := context.WithTimeout(t.Context(), apiRequestTimeout)
					defer cancel()
					return tc.healed(ctx)
				})
			})
		}
		if n := watchSyncs("heal"); n == 0 {
			t.Errorf("drover_agent_watch_syncs_total{application=heal} = 0 after the heals, want some")
		}
		fl.with(t).waitHealthy("heal", cluster, commit)
	})

	t.Run("selfHeal off: reported, not reverted", func(t *testing.T) {
		f := fl.with(t)
		if _, err := kube.AppsV1().Deployments("report").Patch(t.Context(), "nginx", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
			t.Fatal(err)
		}
		testbed.Eventually(t, "report OutOfSync on "+cluster+" (interval 1h)", waitConverge, func() (bool, string) {
			s, err := f.status("report", cluster)
			if err != nil {
				return false, err.Error()
			}
			return s.GetSync() == droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC, fmt.Sprintf("hub says %v", s)
		})
		d, err := kube.AppsV1().Deployments("report").Get(t.Context(), "nginx", metav1.GetOptions{})
		if err != nil || *d.Spec.Replicas != 4 {
			t.Fatalf("report's Deployment: %v (err %v); want the hand-set 4 replicas left alone", d.Spec.Replicas, err)
		}
	})
}

// handChange is a change made by hand to what the agent applied, and how
// to tell it was reverted.
type handChange struct {
	name   string
	change func(ctx context.Context) error
	healed func(ctx context.Context) (bool, string)
}

// scaleByHand is kubectl scale of ns's nginx Deployment, from 2 to 5.
func scaleByHand(kube kubernetes.Interface, ns string) handChange {
	return handChange{
		name: "kubectl scale",
		change: func(ctx context.Context) error {
			_, err := kube.AppsV1().Deployments(ns).Patch(ctx, "nginx", types.MergePatchType, []byte(`{"spec":{"replicas":5}}`), metav1.PatchOptions{FieldManager: "kubectl"})
			return err
		},
		healed: func(ctx context.Context) (bool, string) {
			d, err := kube.AppsV1().Deployments(ns).Get(ctx, "nginx", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return *d.Spec.Replicas == 2, fmt.Sprintf("spec.replicas = %d", *d.Spec.Replicas)
		},
	}
}

// editByHand is an edit of the data of ns's settings ConfigMap.
func editByHand(kube kubernetes.Interface, ns string) handChange {
	return handChange{
		name: "ConfigMap edited",
		change: func(ctx context.Context) error {
			_, err := kube.CoreV1().ConfigMaps(ns).Patch(ctx, "settings", types.MergePatchType, []byte(`{"data":{"greeting":"edited by hand"}}`), metav1.PatchOptions{FieldManager: "kubectl-edit"})
			return err
		},
		healed: func(ctx context.Context) (bool, string) { return greeting(ctx, kube.CoreV1().ConfigMaps(ns).Get) },
	}
}

// greeting says whether the settings ConfigMap is back as applied.
func greeting(ctx context.Context, get func(context.Context, string, metav1.GetOptions) (*corev1.ConfigMap, error)) (bool, string) {
	cm, err := get(ctx, "settings", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, "ConfigMap settings missing"
	}
	if err != nil {
		return false, err.Error()
	}
	return cm.Data["greeting"] == "hello", fmt.Sprintf("greeting %q", cm.Data["greeting"])
}
