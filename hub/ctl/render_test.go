package ctl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// A chart in Git whose replica count comes from values, with a values file
// naming the cluster (variables are substituted in values, not in what
// templates make), and whose Deployment branches on the cluster's
// Kubernetes version.
var webChart = map[string]string{
	"charts/web/Chart.yaml":       "apiVersion: v2\nname: web\nversion: 1.0.0\n",
	"charts/web/values.yaml":      "replicas: 1\nimage: nginx:1.23.0\n",
	"charts/web/values-prod.yaml": "replicas: 2\ncluster: ${cluster.name}\n",
	"charts/web/templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    cluster: {{ .Values.cluster }}
{{- if semverCompare ">=1.37.0-0" .Capabilities.KubeVersion.Version }}
    kubernetes: recent
{{- end }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: {{ .Values.image }}
`,
}

const chartApp = `apiVersion: drover.dev/v1
kind: Application
metadata:
  name: web
spec:
  source:
    repoURL: REPO
    path: charts/web
  render:
    type: helm
    namespace: web
    valuesFiles: [values-prod.yaml]
    values:
      image: nginx:1.24.0
  placement:
    selector:
      matchLabels:
        env: prod
  overrides:
  - selector:
      matchLabels:
        region: eu
    helmValues: |
      replicas: 3
`

// TestRender: droverctl render prints what one cluster's agent would apply,
// rendered here with the agent's code from what the hub resolves for that
// cluster (its overrides, its Kubernetes version), at the current or an
// earlier release.
func TestRender(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "charts")
	c1 := repo.Commit(t, "web chart", webChart)
	for name, labels := range map[string]map[string]string{
		"prod-eu": {"env": "prod", "region": "eu"},
		"prod-us": {"env": "prod", "region": "us"},
		"staging": {"env": "staging"},
	} {
		h.registerCluster(t, name, labels)
	}
	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "v0.1.0"}
	if err := h.Store().MarkConnected(context.Background(), "prod-eu", "hub-test", "10.0.0.7:51234", facts, time.Now()); err != nil {
		t.Fatal(err)
	}
	s := newSession(t, h)
	s.replace(repo.URL, "http://GIT/charts.git")
	s.login()
	s.must("", "apply", "-f", s.writeFile("web.yaml", strings.ReplaceAll(chartApp, "REPO", repo.URL)))
	h.waitRelease(t, "web")
	s.replace(c1, "<commit-1>")
	c2 := repo.Commit(t, "web: more replicas by default", map[string]string{"charts/web/values.yaml": "replicas: 5\nimage: nginx:1.23.0\n"})
	s.replace(c2, "<commit-2>")
	s.must("", "app", "refresh", "web")

	eu := s.must("", "render", "web", "--cluster", "prod-eu")
	for _, want := range []string{"replicas: 3", "image: nginx:1.24.0", "cluster: prod-eu", "kubernetes: recent", "namespace: web"} {
		if !strings.Contains(eu.stdout, want) {
			t.Errorf("render web --cluster prod-eu lacks %q", want)
		}
	}
	us := s.must("", "render", "web", "--cluster", "prod-us")
	if !strings.Contains(us.stdout, "replicas: 2") || !strings.Contains(us.stdout, "cluster: prod-us") {
		t.Errorf("render web --cluster prod-us: values-prod.yaml's replicas and prod-us's name wanted:\n%s", us.stdout)
	}
	s.must("", "render", "web", "--cluster", "prod-eu", "--values-only")
	s.must("", "render", "web", "--cluster", "prod-us", "--commit", c1)
	s.fails(2, "", "render", "web")
	s.fails(1, "", "render", "web", "--cluster", "staging")
	s.fails(1, "", "render", "web", "--cluster", "nope")
	s.fails(1, "", "render", "web", "--cluster", "prod-eu", "--commit", "main")
	s.golden("render")
}
