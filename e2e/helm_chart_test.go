package e2e

import (
	"fmt"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// shopChartDir is where the shop chart lives in its Git repository.
const shopChartDir = "deploy/shop"

// shopChart is a chart written the way charts in the wild are: named
// templates in _helpers.tpl, a vendored subchart switched by a condition,
// a CRD in crds/ with a custom resource of it among the templates, Helm
// hooks (pre-upgrade, post-install, test), and templates that depend on
// the cluster's .Capabilities. Its release is "prod", so its objects are
// named prod-shop and prod-cache.
func shopChart() map[string]string {
	files := map[string]string{
		"Chart.yaml": `apiVersion: v2
name: shop
description: The shop web application and its cache.
version: 1.0.0
appVersion: "1.0"
kubeVersion: ">=1.30.0-0"
dependencies:
- name: cache
  version: 0.1.0
  condition: cache.enabled
`,
		".helmignore": "*.orig\n.git/\n",
		"templates/_helpers.tpl": `{{/* The release's name, with the chart's unless it holds it already. */}}
{{- define "shop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shop.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "shop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
`,
		"templates/NOTES.txt": `The shop runs as {{ include "shop.fullname" . }} in {{ .Release.Namespace }}.
`,
		"templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "shop.fullname" . }}
  labels:
    {{- include "shop.labels" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      {{- include "shop.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "shop.selectorLabels" . | nindent 8 }}
    spec:
      containers:
      - name: shop
        image: "{{ .Values.image.repository }}:{{ required "image.tag is required" .Values.image.tag }}"
        {{- if .Values.cache.enabled }}
        env:
        - name: CACHE_ADDR
          value: {{ .Release.Name }}-cache:6379
        {{- end }}
`,
		"templates/pdb.yaml": `{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "shop.fullname" . }}
  labels:
    {{- include "shop.labels" . | nindent 4 }}
spec:
  minAvailable: 1
  selector:
    matchLabels:
      {{- include "shop.selectorLabels" . | nindent 6 }}
{{- end }}
`,
		"templates/nope.yaml": `{{- if .Capabilities.APIVersions.Has "example.com/v1/Nope" }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "shop.fullname" . }}-nope
data:
  served: "example.com/v1/Nope"
{{- end }}
`,
		"templates/widget.yaml": `apiVersion: example.com/v1
kind: Widget
metadata:
  name: {{ include "shop.fullname" . }}
  labels:
    {{- include "shop.labels" . | nindent 4 }}
spec:
  size: {{ .Values.widget.size }}
`,
		"templates/hooks/migrate-job.yaml": `apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "shop.fullname" . }}-migrate
  labels:
    {{- include "shop.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: pre-upgrade
    helm.sh/hook-delete-policy: before-hook-creation
    shop.example.com/migrates-to: {{ .Values.image.tag | quote }}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
        args: [migrate]
`,
		"templates/hooks/installed-configmap.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "shop.fullname" . }}-installed
  labels:
    {{- include "shop.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: post-install
data:
  installedTag: {{ .Values.image.tag | quote }}
`,
		"templates/tests/test-connection.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: {{ include "shop.fullname" . }}-test-connection
  labels:
    {{- include "shop.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: test
spec:
  restartPolicy: Never
  containers:
  - name: wget
    image: busybox:1.36
    command: [wget, "{{ include "shop.fullname" . }}:80"]
`,
		"crds/widgets.yaml": `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
`,
		"charts/cache/Chart.yaml":  "apiVersion: v2\nname: cache\nversion: 0.1.0\nappVersion: \"7.2\"\n",
		"charts/cache/values.yaml": "image: redis:7.2\nmaxMemory: 32mb\n",
		"charts/cache/templates/_helpers.tpl": `{{- define "cache.fullname" -}}
{{- printf "%s-cache" .Release.Name -}}
{{- end -}}
`,
		"charts/cache/templates/configmap.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "cache.fullname" . }}-config
data:
  redis.conf: |
    maxmemory {{ .Values.maxMemory }}
`,
		"charts/cache/templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cache.fullname" . }}
spec:
  replicas: 1
  selector:
    matchLabels: {app: {{ include "cache.fullname" . }}}
  template:
    metadata:
      labels: {app: {{ include "cache.fullname" . }}}
    spec:
      containers:
      - name: redis
        image: {{ .Values.image }}
`,
	}
	out := make(map[string]string, len(files)+1)
	for name, content := range files {
		out[shopChartDir+"/"+name] = content
	}
	out[shopChartDir+"/values.yaml"] = shopValues("1.0.0", true)
	return out
}

// shopValues is the shop chart's values.yaml: the image tag, and whether
// the cache subchart is on (with a setting the parent passes down to it).
func shopValues(tag string, cache bool) string {
	return fmt.Sprintf(`image:
  repository: registry.example/shop
  tag: %q
replicas: 2
widget:
  size: 3
cache:
  enabled: %t
  maxMemory: 64mb
`, tag, cache)
}

// The kinds the shop chart makes.
var (
	gvrDeployment = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	gvrConfigMap  = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	gvrPod        = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	gvrJob        = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	gvrPDB        = schema.GroupVersionResource{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"}
	gvrWidget     = schema.GroupVersionResource{Group: "example.com", Version: "v1", Resource: "widgets"}
	gvrCRD        = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// obj names one object of a cluster; namespace "" is cluster-scoped.
type obj struct {
	gvr             schema.GroupVersionResource
	namespace, name string
}

func (o obj) String() string {
	if o.namespace == "" {
		return o.gvr.Resource + "/" + o.name
	}
	return o.gvr.Resource + "/" + o.namespace + "/" + o.name
}

// get reads o from cluster; a NotFound error says it does not exist.
func (f *fleet) get(cluster string, o obj) (*unstructured.Unstructured, error) {
	f.t.Helper()
	dyn, err := dynamic.NewForConfig(f.clusters[cluster].Config)
	if err != nil {
		f.t.Fatalf("dynamic client of %s: %v", cluster, err)
	}
	if o.namespace == "" {
		return dyn.Resource(o.gvr).Get(f.t.Context(), o.name, metav1.GetOptions{})
	}
	return dyn.Resource(o.gvr).Namespace(o.namespace).Get(f.t.Context(), o.name, metav1.GetOptions{})
}

// mustGet reads o from cluster, failing the test if it is not there.
func (f *fleet) mustGet(cluster string, o obj) *unstructured.Unstructured {
	f.t.Helper()
	u, err := f.get(cluster, o)
	if err != nil {
		f.t.Fatalf("%s on %s: %v", o, cluster, err)
	}
	return u
}

// absent fails the test unless none of objs exists on cluster.
func (f *fleet) absent(cluster, why string, objs ...obj) {
	f.t.Helper()
	for _, o := range objs {
		if _, err := f.get(cluster, o); !apierrors.IsNotFound(err) {
			f.t.Errorf("%s on %s: want none (%s); get: %v", o, cluster, why, err)
		}
	}
}

// waitGone waits until none of objs exists on cluster.
func (f *fleet) waitGone(cluster string, objs ...obj) {
	f.t.Helper()
	for _, o := range objs {
		testbed.Eventually(f.t, fmt.Sprintf("%s gone from %s", o, cluster), waitConverge, func() (bool, string) {
			u, err := f.get(cluster, o)
			if apierrors.IsNotFound(err) {
				return true, ""
			}
			if err != nil {
				return false, err.Error()
			}
			return false, fmt.Sprintf("still there, deletionTimestamp %v", u.GetDeletionTimestamp())
		})
	}
}

// jobComplete says whether the Job u has its Complete condition.
func jobComplete(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Complete" && m["status"] == "True" {
			return true
		}
	}
	return false
}

func containerImage(u *unstructured.Unstructured) string {
	cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		return ""
	}
	img, _, _ := unstructured.NestedString(cs[0].(map[string]any), "image")
	return img
}

// TestRealisticChart deploys a chart shaped like those of public chart
// repositories from Git (shopChart) to one cluster, upgrades it twice and
// deletes it, checking at each step what Helm would have made of it:
// crds/ installed, the subchart in or out by its condition, each hook at
// its event only, test hooks never, and .Capabilities from the cluster.
func TestRealisticChart(t *testing.T) {
	const (
		cluster = "edge-1"
		ns      = "shop"
	)
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "shop")
	c1 := repo.Commit(t, "shop chart 1.0.0 with its cache", shopChart())

	fl := newFleet(t, map[string]map[string]string{cluster: {"env": "prod"}})
	// The namespace is the platform team's, not the chart's: what is
	// pruned from it below was pruned by Drover, not by its deletion.
	if _, err := fl.kube(cluster).CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	fl.do(http.MethodPost, "/api/v1/applications", &droverv1.Application{Name: "shop", Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repo.URL, Ref: "main", Path: shopChartDir},
		Render:     &droverv1.Render{Type: "helm", Namespace: ns, ReleaseName: "prod"},
		Placement:  &droverv1.Placement{ClusterNames: []string{cluster}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "3s"},
	}}, nil)

	var (
		web       = obj{gvrDeployment, ns, "prod-shop"}
		pdb       = obj{gvrPDB, ns, "prod-shop"}
		widget    = obj{gvrWidget, ns, "prod-shop"}
		crd       = obj{gvrCRD, "", "widgets.example.com"}
		cache     = obj{gvrDeployment, ns, "prod-cache"}
		cacheConf = obj{gvrConfigMap, ns, "prod-cache-config"}
		migrate   = obj{gvrJob, ns, "prod-shop-migrate"}
		installed = obj{gvrConfigMap, ns, "prod-shop-installed"}
		testPod   = obj{gvrPod, ns, "prod-shop-test-connection"}
		nope      = obj{gvrConfigMap, ns, "prod-shop-nope"}
	)
	// never checks what must not exist whatever the release.
	never := func(f *fleet) {
		f.t.Helper()
		f.absent(cluster, "Drover never runs test hooks", testPod)
		f.absent(cluster, "the cluster serves no example.com/v1 Nope", nope)
	}

	t.Run("install", func(t *testing.T) {
		f := fl.with(t)
		f.waitHealthy("shop", cluster, c1)

		d := f.mustGet(cluster, web)
		if img := containerImage(d); img != "registry.example/shop:1.0.0" {
			t.Errorf("%s runs %s, want registry.example/shop:1.0.0", web, img)
		}
		// The named templates of _helpers.tpl made the labels.
		for k, want := range map[string]string{
			"helm.sh/chart": "shop-1.0.0", "app.kubernetes.io/instance": "prod",
			"app.kubernetes.io/version": "1.0", "app.kubernetes.io/managed-by": "Helm",
		} {
			if got := d.GetLabels()[k]; got != want {
				t.Errorf("%s label %s = %q, want %q", web, k, got, want)
			}
		}
		f.mustGet(cluster, pdb)
		f.mustGet(cluster, crd)
		if size, _, _ := unstructured.NestedInt64(f.mustGet(cluster, widget).Object, "spec", "size"); size != 3 {
			t.Errorf("%s has spec.size %d, want 3", widget, size)
		}
		// The subchart is on, and got the value its parent passed down.
		f.mustGet(cluster, cache)
		if conf, _, _ := unstructured.NestedString(f.mustGet(cluster, cacheConf).Object, "data", "redis.conf"); conf != "maxmemory 64mb\n" {
			t.Errorf("%s redis.conf = %q, want the parent's maxmemory 64mb", cacheConf, conf)
		}
		if tag, _, _ := unstructured.NestedString(f.mustGet(cluster, installed).Object, "data", "installedTag"); tag != "1.0.0" {
			t.Errorf("post-install hook %s says installedTag %q, want 1.0.0", installed, tag)
		}
		f.absent(cluster, "a pre-upgrade hook does not run at install", migrate)
		never(f)
	})

	var firstMigration *unstructured.Unstructured
	t.Run("upgrade without the cache", func(t *testing.T) {
		f := fl.with(t)
		c2 := repo.Commit(t, "shop 1.1.0, cache off", map[string]string{shopChartDir + "/values.yaml": shopValues("1.1.0", false)})
		f.refresh("shop")
		f.waitHealthy("shop", cluster, c2)

		if img := containerImage(f.mustGet(cluster, web)); img != "registry.example/shop:1.1.0" {
			t.Errorf("%s runs %s, want registry.example/shop:1.1.0", web, img)
		}
		firstMigration = f.mustGet(cluster, migrate)
		if to := firstMigration.GetAnnotations()["shop.example.com/migrates-to"]; to != "1.1.0" || !jobComplete(firstMigration) {
			t.Errorf("pre-upgrade hook %s migrates to %q, complete %v; want the upgrade's 1.1.0, complete", migrate, to, jobComplete(firstMigration))
		}
		f.waitGone(cluster, cache, cacheConf)
		// post-install ran once, at install; an upgrade leaves it be.
		if tag, _, _ := unstructured.NestedString(f.mustGet(cluster, installed).Object, "data", "installedTag"); tag != "1.0.0" {
			t.Errorf("post-install hook %s says installedTag %q after an upgrade, want 1.0.0", installed, tag)
		}
		f.mustGet(cluster, pdb)
		f.mustGet(cluster, widget)
		never(f)
	})

	t.Run("second upgrade replaces the migration", func(t *testing.T) {
		if firstMigration == nil {
			t.Fatal("the first upgrade did not run its migration")
		}
		f := fl.with(t)
		c3 := repo.Commit(t, "shop 1.2.0", map[string]string{shopChartDir + "/values.yaml": shopValues("1.2.0", false)})
		f.refresh("shop")
		f.waitHealthy("shop", cluster, c3)

		// before-hook-creation: the previous Job was deleted and a new one
		// created for this release.
		j := f.mustGet(cluster, migrate)
		if j.GetUID() == firstMigration.GetUID() {
			t.Errorf("pre-upgrade hook %s is still the first upgrade's (uid %s); before-hook-creation wants a new one", migrate, j.GetUID())
		}
		if to := j.GetAnnotations()["shop.example.com/migrates-to"]; to != "1.2.0" || !jobComplete(j) {
			t.Errorf("pre-upgrade hook %s migrates to %q, complete %v; want 1.2.0, complete", migrate, to, jobComplete(j))
		}
		if img := containerImage(f.mustGet(cluster, web)); img != "registry.example/shop:1.2.0" {
			t.Errorf("%s runs %s, want registry.example/shop:1.2.0", web, img)
		}
		never(f)
	})

	t.Run("delete", func(t *testing.T) {
		f := fl.with(t)
		f.do(http.MethodDelete, "/api/v1/applications/shop", nil, nil)
		// Drover prunes every object of the render, the CRD of crds/
		// included: deleting it takes every Widget of the cluster with it.
		// (helm uninstall keeps crds/ CRDs; Drover manages them as any
		// other object it applied.)
		f.waitGone(cluster, web, pdb, widget, crd)
		// Hooks are not the release's objects: as with Helm, they stay.
		f.mustGet(cluster, migrate)
		f.mustGet(cluster, installed)
		never(f)
	})
}
