package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// chartApp is a chart from an OCI registry (chart "") or a Helm repository
// on edge-1, released into namespace ns.
func chartApp(name, repoURL, chart, version, ns string) *droverv1.Application {
	return &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Chart: chart, Version: version, PollInterval: "10s"},
		Render:     &droverv1.Render{Type: "helm", Namespace: ns},
		Placement:  &droverv1.Placement{ClusterNames: []string{"edge-1"}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
}

// waitFailing waits until the hub says app failed on cluster with a
// message holding every one of want, and returns the status.
func (f *fleet) waitFailing(app, cluster string, want ...string) *droverv1.ApplicationStatus {
	f.t.Helper()
	var s *droverv1.ApplicationStatus
	testbed.Eventually(f.t, fmt.Sprintf("%s failing on %s with %q", app, cluster, want), waitConverge, func() (bool, string) {
		var err error
		if s, err = f.status(app, cluster); err != nil {
			return false, err.Error()
		}
		for _, w := range want {
			if !strings.Contains(s.GetMessage(), w) {
				return false, fmt.Sprintf("hub says %v", s)
			}
		}
		return true, ""
	})
	return s
}

// imageIn is the image of the nginx Deployment in namespace ns, "" if
// there is none.
func (f *fleet) imageIn(cluster, ns string) string {
	d, err := f.kube(cluster).AppsV1().Deployments(ns).Get(f.t.Context(), "nginx", metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// TestOCISources deploys from a real OCI registry: a Helm chart and an
// artifact of plain manifests (the layout `flux push artifact` makes),
// each pinned by digest. A tampered blob, a broken template and a range
// no version satisfies each fail their own application with a message
// that says why, while the others keep running.
func TestOCISources(t *testing.T) {
	reg := testbed.StartRegistry(t)
	chartRef, _ := reg.PushChart(t, nginxChart("1.0.0", "1.23.0"))
	manifests := testbed.ExampleAppIn("art", "nginx:1.25.0")
	reg.PushArtifact(t, "manifests/art", "v1", manifests)

	fl := newFleet(t, map[string]map[string]string{"edge-1": {"env": "edge"}})
	registry := "oci://" + reg.Host
	fl.do(http.MethodPut, "/api/v1/repositories", &droverv1.SetRepositoryCredentialsRequest{
		Url: chartRef, Credentials: &droverv1.RepoCredentials{CaPem: string(reg.CAPEM)},
	}, nil)
	fl.do(http.MethodPut, "/api/v1/repositories", &droverv1.SetRepositoryCredentialsRequest{
		Url: registry + "/manifests/art", Credentials: &droverv1.RepoCredentials{CaPem: string(reg.CAPEM)},
	}, nil)

	chart := chartApp("chart", chartRef, "", "1.x", "chart")
	art := &droverv1.Application{Name: "art", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: registry + "/manifests/art", Version: "v1", Path: "apps/art"},
		Placement:  &droverv1.Placement{ClusterNames: []string{"edge-1"}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}
	fl.do(http.MethodPost, "/api/v1/applications", chart, nil)
	fl.do(http.MethodPost, "/api/v1/applications", art, nil)

	var chartRev, artRev string
	t.Run("a chart and a manifests artifact pinned by digest", func(t *testing.T) {
		f := fl.with(t)
		chartRev = f.waitRelease("chart", "1.0.0@sha256:")
		artRev = f.waitRelease("art", "v1@sha256:")
		f.waitHealthy("chart", "edge-1", chartRev)
		f.waitHealthy("art", "edge-1", artRev)
		if img := f.imageIn("edge-1", "chart"); img != "nginx:1.23.0" {
			t.Errorf("chart runs %s, want nginx:1.23.0", img)
		}
		if img := f.imageIn("edge-1", "art"); img != "nginx:1.25.0" {
			t.Errorf("art runs %s, want nginx:1.25.0", img)
		}
	})

	t.Run("a tampered chart is refused and the release before keeps running", func(t *testing.T) {
		f := fl.with(t)
		_, digest := reg.PushChart(t, nginxChart("1.1.0", "1.24.0"))
		for _, layer := range reg.Layers(t, "charts/nginx", digest) {
			reg.TamperBlob(t, layer)
		}
		f.refresh("chart")
		r2 := f.waitRelease("chart", "1.1.0@sha256:")
		s := f.waitFailing("chart", "edge-1", "does not match the pinned")
		if s.GetCommit() == r2 && s.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED {
			t.Fatalf("the tampered release synced: %v", s)
		}
		if img := f.imageIn("edge-1", "chart"); img != "nginx:1.23.0" {
			t.Errorf("chart runs %s after a tampered release, want nginx:1.23.0 still", img)
		}
		f.waitHealthy("art", "edge-1", artRev)
	})

	t.Run("bad input fails its own application", func(t *testing.T) {
		f := fl.with(t)
		broken := nginxChart("0.1.0", "1.23.0")
		broken["Chart.yaml"] = "apiVersion: v2\nname: broken\nversion: 0.1.0\n"
		broken["templates/deployment.yaml"] = "kind: ConfigMap\nmetadata:\n  name: {{ .Values.name \n"
		brokenRef, _ := reg.PushChart(t, broken)
		f.do(http.MethodPut, "/api/v1/repositories", &droverv1.SetRepositoryCredentialsRequest{
			Url: brokenRef, Credentials: &droverv1.RepoCredentials{CaPem: string(reg.CAPEM)},
		}, nil)
		f.do(http.MethodPost, "/api/v1/applications", chartApp("broken", brokenRef, "", "0.1.0", "broken"), nil)
		f.waitFailing("broken", "edge-1", "templates/deployment.yaml", "3")

		f.do(http.MethodPost, "/api/v1/applications", chartApp("future", chartRef, "", ">=9.0.0", "future"), nil)
		testbed.Eventually(t, "future's source error", waitConverge, func() (bool, string) {
			var resp droverv1.GetApplicationResponse
			if err := f.api.call(t.Context(), http.MethodGet, "/api/v1/applications/future", nil, &resp); err != nil {
				return false, err.Error()
			}
			return strings.Contains(resp.GetSourceError(), ">=9.0.0"), "source error " + resp.GetSourceError()
		})
		// A registry nobody answers at: the hub says so as the
		// application's source error, and polls on.
		dead := testbed.FreeAddr(t)
		f.do(http.MethodPost, "/api/v1/applications", chartApp("unreachable", "oci://"+dead+"/charts/nginx", "", "1.x", "unreachable"), nil)
		testbed.Eventually(t, "unreachable's source error", waitConverge, func() (bool, string) {
			var resp droverv1.GetApplicationResponse
			if err := f.api.call(t.Context(), http.MethodGet, "/api/v1/applications/unreachable", nil, &resp); err != nil {
				return false, err.Error()
			}
			return strings.Contains(resp.GetSourceError(), dead), "source error " + resp.GetSourceError()
		})

		f.waitHealthy("art", "edge-1", artRev)
		if img := f.imageIn("edge-1", "chart"); img != "nginx:1.23.0" {
			t.Errorf("chart runs %s, want nginx:1.23.0 still", img)
		}
	})
}
