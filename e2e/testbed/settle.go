package testbed

import (
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WaitDeploymentsAvailable waits until every Deployment in the namespaces
// has all its replicas available at its current generation: the
// cluster's controllers have finished reacting to their apply. Benchmarks
// use it to time a resync as the next interval finds the cluster, not
// while the controllers still create ReplicaSets and Pods on the same
// cores.
func WaitDeploymentsAvailable(t testing.TB, kube kubernetes.Interface, namespaces ...string) {
	t.Helper()
	Eventually(t, fmt.Sprintf("the Deployments of %v available", namespaces), 3*time.Minute, func() (bool, string) {
		for _, ns := range namespaces {
			deps, err := kube.AppsV1().Deployments(ns).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				return false, fmt.Sprintf("namespace %s: list Deployments: %v", ns, err)
			}
			for _, d := range deps.Items {
				want := int32(1)
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				if d.Status.ObservedGeneration < d.Generation || d.Status.AvailableReplicas < want {
					return false, fmt.Sprintf("Deployment %s/%s: %d of %d available", ns, d.Name, d.Status.AvailableReplicas, want)
				}
			}
		}
		return true, ""
	})
}
