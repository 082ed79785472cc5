package render

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// chartYAML is a Chart.yaml of apiVersion v2.
func chartYAML(name string, extra ...string) string {
	return fmt.Sprintf("apiVersion: v2\nname: %s\nversion: 1.0.0\n", name) + strings.Join(extra, "")
}

// under prefixes every path of files with dir.
func under(dir string, files map[string]string) map[string]string {
	out := make(map[string]string, len(files))
	for p, c := range files {
		out[dir+"/"+p] = c
	}
	return out
}

// tgz packs files as a chart archive, below the directory top as `helm
// package` does.
func tgz(t testing.TB, top string, files map[string]string) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: top + "/" + name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func helmApp(p string) *droverv1.AppAssignment {
	return &droverv1.AppAssignment{Name: "shop", Path: p, Render: droverv1.RenderType_RENDER_TYPE_HELM}
}

// renderHelmErr renders and returns the *Error, failing the test on any
// other outcome.
func renderHelmErr(t *testing.T, o Options, files map[string]string, links map[string]string, a *droverv1.AppAssignment) *Error {
	t.Helper()
	root := tree{files: files, links: links}.write(t)
	objs, err := o.Render(t.Context(), root, a)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Render = %v, %v; want an *Error", ids(objs), err)
	}
	return e
}

const configMapTemplate = `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels:
    release: {{ .Release.Name }}
    namespace: {{ .Release.Namespace }}
    installing: {{ .Release.IsInstall | quote }}
    service: {{ .Release.Service }}
data:
  script: 'echo ${HOME} ${cluster.name}'
  outside: {{ .Files.Get "../outside.yaml" | quote }}
  outside2: {{ .Files.Get "../../outside.yaml" | quote }}
  own: {{ .Files.Get "files/own.txt" | quote }}
`

func basicChart() map[string]string {
	return map[string]string{
		"Chart.yaml":     chartYAML("web"),
		"values.yaml":    "replicas: 2\nimage:\n  repository: nginx\n  tag: \"1.27\"\n",
		"files/own.txt":  "own file",
		".helmignore":    "ignored/\n",
		"ignored/x.yaml": "not: [valid",
		"templates/_helpers.tpl": `{{- define "web.fullname" -}}{{ .Release.Name }}-{{ .Chart.Name }}{{- end -}}
`,
		"templates/configmap.yaml": configMapTemplate,
		"templates/service.yaml": `apiVersion: v1
kind: Service
metadata:
  name: {{ include "web.fullname" . }}
spec:
  ports:
  - port: 80
`,
		"templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "web.fullname" . }}
spec:
  replicas: {{ .Values.replicas }}
  template:
    spec:
      containers:
      - name: web
        image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
`,
		"templates/NOTES.txt":  "Thanks for installing {{ .Release.Name }}.\n",
		"templates/empty.yaml": "{{- if false }}\napiVersion: v1\n{{- end }}\n",
	}
}

// TestRenderHelmChart: a chart renders as `helm template` would, objects
// in Helm's install order, NOTES.txt and empty templates left out, the
// assignment's namespace on namespaced objects, variables not substituted
// in the output, and nothing of the disk outside the chart read.
func TestRenderHelmChart(t *testing.T) {
	t.Parallel()
	root := tree{files: under("charts/web", basicChart())}.write(t)
	a := helmApp("charts/web")
	a.Namespace = "shop"
	a.Variables = map[string]string{"cluster.name": "prod-1"}
	objs, err := Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ConfigMap shop/shop-config", "Service shop/shop-web", "Deployment shop/shop-web"}
	if got := ids(objs); !slices.Equal(got, want) {
		t.Fatalf("objects = %v, want %v", got, want)
	}
	data := objs[0].Object["data"].(map[string]any)
	labels := objs[0].GetLabels()
	for k, want := range map[string]string{"release": "shop", "namespace": "shop", "installing": "true", "service": "Helm"} {
		if labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, labels[k], want)
		}
	}
	// A chart's own "${...}" is its business: not a Drover variable.
	if data["script"] != "echo ${HOME} ${cluster.name}" {
		t.Errorf("script = %q, want it as the chart wrote it", data["script"])
	}
	// .Files holds the chart's files and nothing else: a path leaving
	// the chart is just a file it does not hold.
	if data["outside"] != "" || data["outside2"] != "" {
		t.Errorf(".Files.Get of a path outside the chart = %q, %q; want empty", data["outside"], data["outside2"])
	}
	if data["own"] != "own file" {
		t.Errorf(".Files.Get of the chart's own file = %q", data["own"])
	}
	replicas, _, _ := unstructuredInt(objs[2].Object, "spec", "replicas")
	if replicas != 2 {
		t.Errorf("replicas = %d, want the chart's default 2", replicas)
	}

	// Without a namespace, Helm's "default" is the release's, and objects
	// keep none, as with any render.
	a.Namespace = ""
	objs, err = Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := objs[0].GetLabels()["namespace"]; got != "default" || objs[0].GetNamespace() != "" {
		t.Errorf(".Release.Namespace = %q, object namespace %q; want \"default\" and none", got, objs[0].GetNamespace())
	}
	// The release name, when given, wins over the application's name.
	a.ReleaseName = "storefront"
	objs, err = Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(objs); got[0] != "ConfigMap storefront-config" {
		t.Errorf("with a release name: %v", got)
	}

	// The assignment's patches apply to the chart's objects like any.
	a.Patches = []*droverv1.KustomizePatch{{Patch: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: storefront-web\nspec:\n  replicas: 5\n"}}
	objs, err = Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if replicas, _, _ := unstructuredInt(objs[2].Object, "spec", "replicas"); replicas != 5 {
		t.Errorf("patched replicas = %d, want 5", replicas)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func unstructuredInt(m map[string]any, keys ...string) (int64, bool, error) {
	v := nested(m, keys...)
	switch x := v.(type) {
	case int64:
		return x, true, nil
	case float64:
		return int64(x), true, nil
	}
	return 0, false, fmt.Errorf("%v is %T", keys, v)
}

// TestRenderHelmValuesOrder: the chart's defaults < the values files, in
// order < the Helm values documents, in order; maps merge, lists and
// scalars are replaced, null deletes a default; variables are substituted
// in the assignment's values only, before templating.
func TestRenderHelmValuesOrder(t *testing.T) {
	t.Parallel()
	files := under("web", map[string]string{
		"Chart.yaml": chartYAML("web"),
		"values.yaml": `a: chart
b: chart
c: chart
d: chart
e: chart
gone: chart
literal: "${cluster.name}"
list: [1, 2, 3]
nested: {x: chart, w: chart}
`,
		"values/one.yaml": "b: one\nc: one\nd: one\ne: one\nlist: [9]\nnested: {w: one, z: one}\ncluster: \"${cluster.name}/${cluster.labels.zone}\"\n",
		"values/two.yaml": "c: two\nd: two\ne: two\n",
		"templates/cm.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: values
data:
  all: {{ toJson .Values | quote }}
`,
	})
	a := helmApp("web")
	a.ValuesFiles = []string{"values/one.yaml", "values/two.yaml"}
	a.HelmValues = "d: inline\ne: inline\ngone: null\n---\ne: override\n"
	a.Variables = map[string]string{"cluster.name": "prod-1", "cluster.labels.zone": "eu-1"}
	want := map[string]any{
		"a": "chart", "b": "one", "c": "two", "d": "inline", "e": "override",
		"literal": "${cluster.name}",
		"list":    []any{float64(9)},
		"nested":  map[string]any{"x": "chart", "w": "one", "z": "one"},
		"cluster": "prod-1/eu-1",
	}
	root := tree{files: files}.write(t)
	objs, err := Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := jsonUnmarshal(objs[0].Object["data"].(map[string]any)["all"].(string), &got); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("values the templates saw:\n got %v\nwant %v", got, want)
	}
	vals, err := Options{}.HelmValues(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(vals) != fmt.Sprint(want) {
		t.Errorf("HelmValues:\n got %v\nwant %v", vals, want)
	}
}

// TestRenderHelmCapabilities: .Capabilities are the ones Options gives,
// so the same chart renders for what each cluster serves.
func TestRenderHelmCapabilities(t *testing.T) {
	t.Parallel()
	root := tree{files: under("web", map[string]string{
		"Chart.yaml": chartYAML("web"),
		"templates/pdb.yaml": `{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  maxUnavailable: 1
{{- end }}
`,
		"templates/cm.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ if semverCompare ">=1.37.0-0" .Capabilities.KubeVersion.Version }}new{{ else }}old{{ end }}
data:
  version: {{ .Capabilities.KubeVersion.Version | quote }}
`,
	})}.write(t)
	for _, tt := range []struct {
		o    Options
		want []string
	}{
		{Options{KubeVersion: "v1.37.2", APIVersions: []string{"v1", "policy/v1", "policy/v1/PodDisruptionBudget"}}, []string{"PodDisruptionBudget web", "ConfigMap new"}},
		{Options{KubeVersion: "v1.30.1-gke.100", APIVersions: []string{"v1", "apps/v1"}}, []string{"ConfigMap old"}},
	} {
		objs, err := tt.o.Render(t.Context(), root, helmApp("web"))
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(objs); !slices.Equal(got, tt.want) {
			t.Errorf("%s: objects %v, want %v", tt.o.KubeVersion, got, tt.want)
		}
	}
}

const crdYAML = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// TestRenderHelmCRDsAndHooks: crds/ come first and are not templated;
// hooks stay with their annotations; tests are dropped.
func TestRenderHelmCRDsAndHooks(t *testing.T) {
	t.Parallel()
	root := tree{files: under("web", map[string]string{
		"Chart.yaml":         chartYAML("web"),
		"crds/widgets.yaml":  crdYAML + "# {{ not templated }}\n",
		"templates/cm.yaml":  cm("zz-config"),
		"templates/ns.yaml":  "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web-ns\n",
		"templates/cr.yaml":  "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
		"templates/job.yaml": "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations:\n    helm.sh/hook: pre-upgrade,pre-install\n    helm.sh/hook-weight: \"-5\"\nspec: {}\n",
		"templates/tests/test.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-test\n  annotations:\n    helm.sh/hook: test\nspec: {}\n---\n" +
			"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-test-old\n  annotations:\n    helm.sh/hook: test-success\nspec: {}\n",
	})}.write(t)
	a := helmApp("web")
	a.Namespace = "shop"
	objs, err := Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CustomResourceDefinition widgets.example.com", "Namespace web-ns", "ConfigMap shop/zz-config", "Job shop/migrate", "Widget shop/w"}
	if got := ids(objs); !slices.Equal(got, want) {
		t.Fatalf("objects = %v, want %v", got, want)
	}
	if got := objs[3].GetAnnotations()["helm.sh/hook"]; got != "pre-upgrade,pre-install" {
		t.Errorf("the hook's annotation = %q, want it intact", got)
	}
}

// TestRenderHelmSubcharts: vendored subcharts, as a directory and as an
// archive, render with the parent's values for them; one disabled by its
// condition does not.
func TestRenderHelmSubcharts(t *testing.T) {
	t.Parallel()
	sub := func(name string) map[string]string {
		return map[string]string{
			"Chart.yaml":  chartYAML(name),
			"values.yaml": "greeting: default\n",
			"templates/cm.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Chart.Name }}-{{ .Values.greeting }}
`,
		}
	}
	files := under("web", map[string]string{
		"Chart.yaml": chartYAML("web", `dependencies:
- name: redis
  version: 1.0.0
- name: cache
  version: 1.0.0
- name: extra
  version: 1.0.0
  condition: extra.enabled
`),
		"values.yaml":            "redis:\n  greeting: from-parent\nextra:\n  enabled: false\n",
		"templates/cm.yaml":      cm("web"),
		"charts/cache-1.0.0.tgz": tgz(t, "cache", sub("cache")),
	})
	maps.Copy(files, under("web/charts/redis", sub("redis")))
	maps.Copy(files, under("web/charts/extra", sub("extra")))
	root := tree{files: files}.write(t)
	a := helmApp("web")
	a.HelmValues = "cache:\n  greeting: inline\n"
	objs, err := Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ConfigMap cache-inline", "ConfigMap redis-from-parent", "ConfigMap web"}
	if got := ids(objs); !slices.Equal(got, want) {
		t.Fatalf("objects = %v, want %v", got, want)
	}
}

// TestRenderHelmErrors: each bad input fails with an *Error naming the
// repository's file (and the template's line).
func TestRenderHelmErrors(t *testing.T) {
	t.Parallel()
	withFile := func(p, content string) map[string]string {
		files := under("web", basicChart())
		files["web/"+p] = content
		return files
	}
	valuesApp := helmApp("web")
	valuesApp.ValuesFiles = []string{"values/missing.yaml"}
	tests := []struct {
		name     string
		files    map[string]string
		links    map[string]string
		a        *droverv1.AppAssignment
		wantPath string
		wantLine int
		wantMsg  []string
	}{
		{
			name:     "template syntax error",
			files:    withFile("templates/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }\n"),
			wantPath: "web/templates/bad.yaml", wantLine: 4,
			wantMsg: []string{"parse error at (web/templates/bad.yaml:4)", "unexpected"},
		},
		{
			name:     "required value missing",
			files:    withFile("templates/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: {{ required \"image.digest is required\" .Values.image.digest }}\n"),
			wantPath: "web/templates/bad.yaml", wantLine: 6,
			wantMsg: []string{"execution error at (web/templates/bad.yaml:6:", "image.digest is required"},
		},
		{
			// Helm's message names the template being rendered, where the
			// helper was included, not the helper's own line.
			name: "fail in a helper names the including template",
			files: func() map[string]string {
				files := withFile("templates/_fail.tpl", "{{- define \"web.fail\" -}}\n\n{{ fail \"unsupported setup\" }}\n{{- end -}}\n")
				files["web/templates/uses.yaml"] = "{{ include \"web.fail\" . }}\n"
				return files
			}(),
			wantPath: "web/templates/uses.yaml", wantLine: 1,
			wantMsg: []string{"unsupported setup"},
		},
		{
			name:     "missing values file",
			files:    under("web", basicChart()),
			a:        valuesApp,
			wantPath: "web/values/missing.yaml",
			wantMsg:  []string{"values file does not exist in the chart"},
		},
		{
			name:     "values file outside the chart",
			files:    under("web", basicChart()),
			a:        &droverv1.AppAssignment{Path: "web", Render: droverv1.RenderType_RENDER_TYPE_HELM, ValuesFiles: []string{"../other/values.yaml"}},
			wantPath: "",
			wantMsg:  []string{`values file "../other/values.yaml": must be relative and inside the chart`},
		},
		{
			name:     "invalid Chart.yaml",
			files:    withFile("Chart.yaml", "apiVersion: v2\nversion: 1.0.0\n"),
			wantPath: "web/Chart.yaml",
			wantMsg:  []string{"name is required"},
		},
		{
			name:     "invalid values.yaml",
			files:    withFile("values.yaml", "replicas: 2\n  image: [\n"),
			wantPath: "web/values.yaml",
			wantMsg:  []string{"cannot load values.yaml", "line 2"},
		},
		{
			name:     "rendered document not YAML",
			files:    withFile("templates/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   labels: {{ .Release.Name }}\n"),
			wantPath: "web/templates/bad.yaml",
			wantMsg:  []string{"rendered document 1: yaml: line 5"},
		},
		{
			name:     "dependency not vendored",
			files:    withFile("Chart.yaml", chartYAML("web", "dependencies:\n- name: redis\n  version: 1.0.0\n  repository: https://charts.example.com\n")),
			wantPath: "web/Chart.yaml",
			wantMsg:  []string{`dependency "redis" is not in charts/`},
		},
		{
			name:     "not a chart",
			files:    map[string]string{"web/templates/a.yaml": cm("a")},
			wantPath: "web",
			wantMsg:  []string{"no Chart.yaml"},
		},
		{
			name:     "symbolic link out of the chart",
			files:    withFile("../other/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: outside-secret\n"),
			links:    map[string]string{"web/files/stolen.yaml": "../../other/secret.yaml"},
			wantPath: "web/files/stolen.yaml",
			wantMsg:  []string{"symbolic link leads outside the chart"},
		},
		{
			name:     "symbolic link out of the checkout",
			files:    under("web", basicChart()),
			links:    map[string]string{"web/templates/stolen.yaml": "$PARENT/outside.yaml"},
			wantPath: "web/templates/stolen.yaml",
			wantMsg:  []string{"symbolic link leads outside the chart"},
		},
		{
			name:     "duplicate objects name both templates",
			files:    withFile("templates/again.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop-web\n"),
			wantPath: "web/templates/service.yaml",
			wantMsg:  []string{"also defined in web/templates/again.yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := tt.a
			if a == nil {
				a = helmApp("web")
			}
			e := renderHelmErr(t, Options{}, tt.files, tt.links, a)
			if e.Path != tt.wantPath || e.Line != tt.wantLine {
				t.Errorf("error at %s:%d, want %s:%d: %v", e.Path, e.Line, tt.wantPath, tt.wantLine, e)
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(e.Error(), w) {
					t.Errorf("error %q does not say %q", e.Error(), w)
				}
			}
			if strings.Contains(e.Error(), "outside-secret") {
				t.Errorf("error %q shows the outside file", e.Error())
			}
		})
	}
}

// TestRenderHelmErrorsHideValues: a value of the assignment never appears
// in an error, even where Helm's message would have it.
func TestRenderHelmErrorsHideValues(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-s3cr3t"
	for _, tt := range []struct {
		name     string
		template string
		values   string
		inline   string
	}{
		{"fail echoing a value", "{{ fail (printf \"bad password %s\" .Values.db.password) }}", "db:\n  password: " + secret + "\n", ""},
		{"type error on a value", "{{ .Values.db.password.nope }}", "db:\n  password: " + secret + "\n", ""},
		{"inline value in a template error", "{{ fail .Values.token }}", "", "token: " + secret + "\n"},
		{"values file not YAML", cm("x"), "db:\n  password: " + secret + "\n   bad: [\n", ""},
		{"values file a string", cm("x"), secret + "\n", ""},
		{"inline values not YAML", cm("x"), "", "token: " + secret + "\n  x: [\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := under("web", map[string]string{"Chart.yaml": chartYAML("web"), "templates/t.yaml": tt.template, "secret.yaml": tt.values})
			a := helmApp("web")
			if tt.values != "" {
				a.ValuesFiles = []string{"secret.yaml"}
			}
			a.HelmValues = tt.inline
			e := renderHelmErr(t, Options{}, files, nil, a)
			if strings.Contains(e.Error(), secret) || strings.Contains(e.Error(), "hunter2") {
				t.Errorf("error shows the secret: %v", e)
			}
			t.Log(e)
		})
	}
}

// TestRenderHelmLimits: a chart's files, and what its archives unpack to,
// count against the render's limits like manifests.
func TestRenderHelmLimits(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 2000)
	bomb := tgz(t, "bomb", map[string]string{"Chart.yaml": chartYAML("bomb"), "files/zeros": strings.Repeat("\x00", 16<<20)})
	if len(bomb) > 100<<10 {
		t.Fatalf("the bomb is %d bytes compressed; want it small", len(bomb))
	}
	tests := []struct {
		name    string
		o       Options
		files   map[string]string
		wantErr string
	}{
		{"a file over the per-file limit", Options{MaxFileBytes: 1000},
			map[string]string{"web/Chart.yaml": chartYAML("web"), "web/files/big.txt": big},
			"render web/files/big.txt: 2.0 KiB is over the agent's limit of 1000 bytes per manifest file (--max-manifest-bytes)"},
		{"files over the total limit", Options{MaxFileBytes: 3000, MaxBytes: 3000},
			map[string]string{"web/Chart.yaml": chartYAML("web"), "web/files/a.txt": big, "web/files/b.txt": big},
			"render web/files/b.txt: with this file the manifests read add up to 3.9 KiB, over the agent's limit of 2.9 KiB per application (--max-render-bytes)"},
		{"an archive unpacking over the limit", Options{},
			map[string]string{"web/Chart.yaml": chartYAML("web"), "web/charts/bomb-1.0.0.tgz": bomb},
			"render web/charts/bomb-1.0.0.tgz: files/zeros: 16 MiB is over the agent's limit of 8 MiB per manifest file (--max-manifest-bytes)"},
		{"templates rendering over the total limit", Options{MaxBytes: 3000},
			map[string]string{"web/Chart.yaml": chartYAML("web"), "web/templates/many.yaml": "{{ range until 100 }}\n---\n" + cm("cm-{{ . }}") + "{{ end }}\n"},
			"render web: the chart's templates rendered 7.1 KiB, over the agent's limit of 2.9 KiB per application (--max-render-bytes)"},
		{"an archive's files over the total limit", Options{MaxBytes: 1 << 20, MaxFileBytes: 100 << 20},
			map[string]string{"web/Chart.yaml": chartYAML("web"), "web/charts/bomb-1.0.0.tgz": bomb},
			"over the agent's limit of 1 MiB per application (--max-render-bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := renderHelmErr(t, tt.o, tt.files, nil, helmApp("web"))
			if !strings.Contains(e.Error(), tt.wantErr) {
				t.Errorf("err = %q, want %q", e.Error(), tt.wantErr)
			}
		})
	}
}

// TestRenderHelmLinksInsideTheChart: links that stay inside the chart are
// followed, as Helm follows them; links to directories that loop fail.
func TestRenderHelmLinksInsideTheChart(t *testing.T) {
	t.Parallel()
	files := under("web", map[string]string{
		"Chart.yaml":         chartYAML("web"),
		"shared/cm.yaml":     cm("shared"),
		"shared/values.yaml": "from: link\n",
		"templates/own.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: own\ndata:\n  from: {{ .Values.from }}\n",
	})
	links := map[string]string{"web/templates/linked.yaml": "../shared/cm.yaml", "web/values.yaml": "shared/values.yaml"}
	root := tree{files: files, links: links}.write(t)
	objs, err := Render(t.Context(), root, helmApp("web"))
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(objs); !slices.Equal(got, []string{"ConfigMap shared", "ConfigMap own"}) {
		t.Errorf("objects = %v", got)
	}
	if got := nested(objs[1].Object, "data", "from"); got != "link" {
		t.Errorf("value through a linked values.yaml = %v", got)
	}

	links = map[string]string{"web/files/loop": "."}
	e := renderHelmErr(t, Options{}, files, links, helmApp("web"))
	if !strings.Contains(e.Error(), "symbolic links to directories on the way; do they loop?") {
		t.Errorf("a looping link: %v", e)
	}
}

// TestRenderHelmArchiveErrors: an error in a template of a vendored
// archive names the archive, and the template inside it.
func TestRenderHelmArchiveErrors(t *testing.T) {
	t.Parallel()
	sub := map[string]string{
		"Chart.yaml":         chartYAML("cache"),
		"templates/bad.yaml": "{{ required \"cache.size is required\" .Values.size }}\n",
	}
	e := renderHelmErr(t, Options{}, map[string]string{
		"web/Chart.yaml":             chartYAML("web"),
		"web/charts/cache-1.0.0.tgz": tgz(t, "cache", sub),
	}, nil, helmApp("web"))
	if e.Path != "web/charts/cache-1.0.0.tgz" || !strings.Contains(e.Msg, "web/charts/cache/templates/bad.yaml:1:3") || !strings.Contains(e.Msg, "cache.size is required") {
		t.Errorf("err = %v (path %q)", e, e.Path)
	}

	e = renderHelmErr(t, Options{}, map[string]string{
		"web/Chart.yaml":             chartYAML("web"),
		"web/charts/cache-1.0.0.tgz": "not gzip",
	}, nil, helmApp("web"))
	if e.Path != "web/charts/cache-1.0.0.tgz" || !strings.Contains(e.Msg, "not a gzip archive") {
		t.Errorf("err = %v (path %q)", e, e.Path)
	}

	e = renderHelmErr(t, Options{}, map[string]string{
		"web/Chart.yaml":             chartYAML("web"),
		"web/charts/cache-1.0.0.tgz": tgz(t, "cache", map[string]string{"Chart.yaml": "apiVersion: v2\nname: cache\n"}),
	}, nil, helmApp("web"))
	if e.Path != "web/charts/cache-1.0.0.tgz" || !strings.Contains(e.Msg, "Chart.yaml in") && !strings.Contains(e.Msg, "Chart.yaml: ") {
		t.Errorf("err = %v (path %q)", e, e.Path)
	}
}

// realisticChart is a chart the way charts are written: helpers, include
// and tpl, a vendored dependency, CRDs, a pre-upgrade Job hook, a test,
// and objects gated on values and capabilities.
func realisticChart(t testing.TB, extraTemplates map[string]string) map[string]string {
	redis := map[string]string{
		"Chart.yaml":  chartYAML("redis"),
		"values.yaml": "port: 6379\nauth:\n  password: \"\"\n",
		"templates/_helpers.tpl": `{{- define "redis.fullname" -}}{{ .Release.Name }}-redis{{- end -}}
`,
		"templates/statefulset.yaml": `apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ include "redis.fullname" . }}
spec:
  serviceName: {{ include "redis.fullname" . }}
  template:
    spec:
      containers:
      - name: redis
        image: redis:7
        ports:
        - containerPort: {{ .Values.port }}
`,
		"templates/secret.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: {{ include "redis.fullname" . }}
stringData:
  password: {{ required "redis.auth.password is required" .Values.auth.password | quote }}
`,
	}
	files := map[string]string{
		"Chart.yaml": chartYAML("shop", `appVersion: "2.1.0"
kubeVersion: ">=1.29.0-0"
dependencies:
- name: redis
  version: 1.0.0
  repository: https://charts.example.com
  condition: redis.enabled
`),
		"values.yaml": `replicaCount: 2
image:
  repository: registry.example.com/shop
  tag: ""
podAnnotations: {}
ingress:
  enabled: false
  host: shop.example.com
extraConfig: |
  cluster={{ .Values.clusterName }}
  release={{ .Release.Name }}
clusterName: unknown
redis:
  enabled: true
  auth:
    password: ""
`,
		"crds/widgets.yaml": crdYAML,
		"templates/_helpers.tpl": `{{- define "shop.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "shop.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
`,
		"templates/configmap.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "shop.fullname" . }}
  labels:
    {{- include "shop.labels" . | nindent 4 }}
data:
  app.conf: |
    {{- tpl .Values.extraConfig . | nindent 4 }}
`,
		"templates/deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "shop.fullname" . }}
  labels:
    {{- include "shop.labels" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      annotations:
        checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
      - name: shop
        image: "{{ .Values.image.repository }}:{{ required "image.tag is required" .Values.image.tag }}"
        env:
        - name: REDIS_HOST
          value: {{ .Release.Name }}-redis
`,
		"templates/service.yaml": `apiVersion: v1
kind: Service
metadata:
  name: {{ include "shop.fullname" . }}
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
  - port: 80
`,
		"templates/ingress.yaml": `{{- if .Values.ingress.enabled }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "shop.fullname" . }}
spec:
  rules:
  - host: {{ .Values.ingress.host }}
{{- end }}
`,
		"templates/pdb.yaml": `{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "shop.fullname" . }}
spec:
  minAvailable: 1
{{- end }}
`,
		"templates/widget.yaml": `apiVersion: example.com/v1
kind: Widget
metadata:
  name: {{ include "shop.fullname" . }}
`,
		"templates/migrate-job.yaml": `apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "shop.fullname" . }}-migrate
  annotations:
    helm.sh/hook: pre-upgrade
    helm.sh/hook-delete-policy: before-hook-creation
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
`,
		"templates/tests/test-connection.yaml": `apiVersion: v1
kind: Pod
metadata:
  name: {{ include "shop.fullname" . }}-test
  annotations:
    helm.sh/hook: test
spec:
  containers:
  - name: wget
    image: busybox
`,
		"templates/NOTES.txt": "Visit http://{{ .Values.ingress.host }}\n",
	}
	maps.Copy(files, extraTemplates)
	files["charts/redis-1.0.0.tgz"] = tgz(t, "redis", redis)
	return files
}

func TestRenderHelmRealisticChart(t *testing.T) {
	t.Parallel()
	root := tree{files: under("deploy/shop", realisticChart(t, nil))}.write(t)
	a := helmApp("deploy/shop")
	a.Namespace = "shop"
	a.ValuesFiles = []string{"values.yaml"}
	a.HelmValues = "image:\n  tag: \"2.1.0\"\nclusterName: ${cluster.name}\nredis:\n  auth:\n    password: pw-${cluster.name}\n---\ningress:\n  enabled: true\n"
	a.Variables = map[string]string{"cluster.name": "prod-1"}
	o := Options{KubeVersion: "v1.37.2", APIVersions: []string{"v1", "apps/v1", "policy/v1", "policy/v1/PodDisruptionBudget"}}
	objs, err := o.Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"CustomResourceDefinition widgets.example.com",
		"PodDisruptionBudget shop/shop-shop",
		"Secret shop/shop-redis",
		"ConfigMap shop/shop-shop",
		"Service shop/shop-shop",
		"Deployment shop/shop-shop",
		"StatefulSet shop/shop-redis",
		"Job shop/shop-shop-migrate",
		"Ingress shop/shop-shop",
		"Widget shop/shop-shop",
	}
	if got := ids(objs); !slices.Equal(got, want) {
		t.Fatalf("objects:\n got %v\nwant %v", got, want)
	}
	if got := nested(objs[3].Object, "data", "app.conf"); got != "cluster=prod-1\nrelease=shop\n" {
		t.Errorf("tpl'd config = %q", got)
	}
	if got := nested(objs[2].Object, "stringData", "password"); got != "pw-prod-1" {
		t.Errorf("the subchart's value from the parent = %q", got)
	}
	if got := objs[3].GetLabels()["app.kubernetes.io/version"]; got != "2.1.0" {
		t.Errorf("version label = %q", got)
	}

	// The chart's kubeVersion is checked against the cluster's.
	o.KubeVersion = "v1.28.3"
	if _, err := o.Render(t.Context(), root, a); err == nil || !strings.Contains(err.Error(), "requires kubeVersion >=1.29.0-0") {
		t.Errorf("on an old cluster: %v", err)
	}
	// The dependency's required value.
	o.KubeVersion = "v1.37.2"
	a.HelmValues = "image:\n  tag: \"2.1.0\"\n"
	var e *Error
	if _, err := o.Render(t.Context(), root, a); !errors.As(err, &e) || e.Path != "deploy/shop/charts/redis-1.0.0.tgz" || !strings.Contains(e.Msg, "redis.auth.password is required") {
		t.Errorf("without the subchart's required value: %v", err)
	}
	// Disabled by its condition, it is not rendered.
	a.HelmValues = "image:\n  tag: \"2.1.0\"\nredis:\n  enabled: false\n"
	objs, err = o.Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(objs); slices.Contains(got, "StatefulSet shop/shop-redis") || len(got) != 7 {
		t.Errorf("with redis disabled: %v", got)
	}
}

// BenchmarkRenderHelmChart renders the realistic chart with about 200
// objects: the templates loop over a list of services.
func BenchmarkRenderHelmChart(b *testing.B) {
	loop := map[string]string{"templates/many.yaml": `{{- range $i := until 48 }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "shop.fullname" $ }}-cm-{{ $i }}
  labels:
    {{- include "shop.labels" $ | nindent 4 }}
data:
  index: {{ $i | quote }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "shop.fullname" $ }}-svc-{{ $i }}
spec:
  ports:
  - port: {{ add 8000 $i }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "shop.fullname" $ }}-{{ $i }}
spec:
  replicas: {{ $.Values.replicaCount }}
  template:
    spec:
      containers:
      - name: app
        image: "{{ $.Values.image.repository }}:{{ $.Values.image.tag }}"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "shop.fullname" $ }}-sa-{{ $i }}
{{- end }}
`}
	root := b.TempDir()
	for p, content := range under("shop", realisticChart(b, loop)) {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	a := helmApp("shop")
	a.Namespace = "shop"
	a.HelmValues = "image:\n  tag: \"2.1.0\"\nredis:\n  auth:\n    password: pw\n"
	o := Options{KubeVersion: "v1.37.2"}
	b.ReportAllocs()
	var n int
	for b.Loop() {
		objs, err := o.Render(b.Context(), root, a)
		if err != nil {
			b.Fatal(err)
		}
		n = len(objs)
	}
	b.ReportMetric(float64(n), "objects/op")
}
