package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// nginxChart is a small chart of the web application at version, whose
// image tag and replica count come from its values.
func nginxChart(version, tag string) map[string]string {
	return map[string]string{
		"Chart.yaml":  fmt.Sprintf("apiVersion: v2\nname: nginx\nversion: %s\nappVersion: %q\n", version, tag),
		"values.yaml": fmt.Sprintf("image:\n  repository: nginx\n  tag: %q\nreplicas: 2\n", tag),
		"templates/namespace.yaml": `apiVersion: v1
kind: Namespace
metadata:
  name: {{ .Release.Namespace }}
`,
		"templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: "{{ .Values.image.repository }}:{{ required "image.tag is required" .Values.image.tag }}"
`,
	}
}

// helmApplication is web from the chart nginx of a Helm repository, on
// every env=prod cluster, canary first, with three replicas in Europe.
func helmApplication(repoURL string) *droverv1.Application {
	return &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Chart: "nginx", Version: ">=1.0.0 <2.0.0", PollInterval: "10s"},
		Render:     &droverv1.Render{Type: "helm", Namespace: "web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
		Overrides: []*droverv1.Override{{
			Selector:   &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}},
			HelmValues: "replicas: 3\n",
		}},
		Rollout: &droverv1.RolloutStrategy{
			ProgressDeadline: waitConverge.String(),
			OfflineTimeout:   rolloutOfflineTimeout.String(),
			Waves: []*droverv1.RolloutWave{
				{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "5s"},
				{Name: "rest"},
			},
		},
	}}
}

// currentRelease is the commit (for a chart, VERSION@sha256:HEX) of app's
// newest release, "" while it has none.
func (f *fleet) currentRelease(app string) string {
	var resp droverv1.GetApplicationResponse
	if err := f.api.call(f.t.Context(), http.MethodGet, "/api/v1/applications/"+app, nil, &resp); err != nil || len(resp.GetReleases()) == 0 {
		return ""
	}
	return resp.GetReleases()[0].GetCommit()
}

func (f *fleet) waitRelease(app, prefix string) string {
	f.t.Helper()
	var rel string
	testbed.Eventually(f.t, fmt.Sprintf("a release of %s at %s", app, prefix), waitConverge, func() (bool, string) {
		rel = f.currentRelease(app)
		return strings.HasPrefix(rel, prefix), "newest release " + rel
	})
	return rel
}

// TestHelmChartRollout is the seed scenario with a chart from a Helm
// repository over HTTPS: chart 1.0.0 on every prod cluster, Europe with
// three replicas from an override; then 1.1.0 (a new image tag in the
// chart's values) through a two-wave rollout, canary first; staging never
// gets it.
func TestHelmChartRollout(t *testing.T) {
	repo := testbed.StartHelmRepo(t)
	repo.Add(t, nginxChart("1.0.0", "1.23.0"))
	fl := newFleet(t, map[string]map[string]string{
		"canary":  {"env": "prod", "ring": "canary", "region": "us"},
		"eu-1":    {"env": "prod", "ring": "main", "region": "eu"},
		"staging": {"env": "staging", "region": "eu"},
	})
	prod := []string{"canary", "eu-1"}
	fl.do(http.MethodPut, "/api/v1/repositories", &droverv1.SetRepositoryCredentialsRequest{
		Url: repo.URL, Credentials: &droverv1.RepoCredentials{CaPem: string(repo.CAPEM)},
	}, nil)
	fl.do(http.MethodPost, "/api/v1/applications", helmApplication(repo.URL), nil)

	var r1 string
	t.Run("chart 1.0.0 on prod, three replicas in Europe", func(t *testing.T) {
		f := fl.with(t)
		r1 = f.waitRelease("web", "1.0.0@sha256:")
		for _, c := range prod {
			f.waitHealthy("web", c, r1)
			if img := f.image(c); img != "nginx:1.23.0" {
				t.Errorf("%s runs %s, want nginx:1.23.0 from the chart's values", c, img)
			}
		}
		f.waitReplicas("canary", 2)
		f.waitReplicas("eu-1", 3)
		f.waitRolloutPhase("web", r1, "completed", waitConverge)
		if _, err := f.deployment("staging"); err == nil {
			t.Error("staging runs the chart; its placement is env=prod")
		}
	})

	t.Run("chart 1.1.0 canary first", func(t *testing.T) {
		f := fl.with(t)
		repo.Add(t, nginxChart("1.1.0", "1.24.0"))
		f.refresh("web")
		r2 := f.waitRelease("web", "1.1.0@sha256:")
		testbed.Eventually(t, "canary Healthy at 1.1.0", waitConverge, func() (bool, string) {
			s, err := f.status("web", "canary")
			if err != nil {
				return false, err.Error()
			}
			if !isSyncedAt(s, r2) {
				// Until the canary has it, Europe must not.
				if img := f.image("eu-1"); img != "nginx:1.23.0" {
					t.Fatalf("eu-1 runs %s before the canary is healthy at 1.1.0", img)
				}
			}
			return isSyncedAt(s, r2), fmt.Sprintf("hub says %v", s)
		})
		for _, c := range prod {
			f.waitHealthy("web", c, r2)
			if img := f.image(c); img != "nginx:1.24.0" {
				t.Errorf("%s runs %s, want nginx:1.24.0", c, img)
			}
		}
		f.waitReplicas("eu-1", 3)
		f.waitRolloutPhase("web", r2, "completed", waitConverge)
		if _, err := f.deployment("staging"); err == nil {
			t.Error("staging runs the chart; its placement is env=prod")
		}
	})

	t.Run("droverctl render shows what eu-1 applies", func(t *testing.T) {
		f := fl.with(t)
		out := f.ctl("render", "web", "--cluster", "eu-1")
		for _, want := range []string{"kind: Deployment", "replicas: 3", "image: nginx:1.24.0", "namespace: web"} {
			if !strings.Contains(out, want) {
				t.Errorf("droverctl render web --cluster eu-1 lacks %q:\n%s", want, out)
			}
		}
		if out := f.ctl("render", "web", "--cluster", "canary", "--commit", r1); !strings.Contains(out, "image: nginx:1.23.0") || !strings.Contains(out, "replicas: 2") {
			t.Errorf("droverctl render web --cluster canary --commit %s:\n%s", r1, out)
		}
		if out := f.ctl("render", "web", "--cluster", "eu-1", "--values-only"); !strings.Contains(out, "replicas: 3") || !strings.Contains(out, "tag: 1.24.0") {
			t.Errorf("droverctl render --values-only:\n%s", out)
		}
	})
}
