package render

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/kustomize/kyaml/openapi"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// tree is a checkout for a test: files by slash-separated path, and
// symbolic links (path → target).
type tree struct {
	files map[string]string
	links map[string]string
}

// write makes t in a new directory and returns the checkout's root, which
// sits in a parent holding a file outside it ("../outside.yaml") for
// escape tests.
func (tr tree) write(t *testing.T) string {
	t.Helper()
	parent := t.TempDir()
	root := filepath.Join(parent, "checkout")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	outside := "apiVersion: v1\nkind: Secret\nmetadata:\n  name: outside-secret\n"
	if err := os.WriteFile(filepath.Join(parent, "outside.yaml"), []byte(outside), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(parent, "outside-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "outside-dir", "s.yaml"), []byte(outside), 0o644); err != nil {
		t.Fatal(err)
	}
	for p, content := range tr.files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for p, target := range tr.links {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		target = strings.ReplaceAll(target, "$PARENT", parent)
		if err := os.Symlink(target, full); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// ids names objects as "Kind namespace/name" (or "Kind name"), in order.
func ids(objs []*unstructured.Unstructured) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		if o.GetNamespace() == "" {
			out[i] = o.GetKind() + " " + o.GetName()
		} else {
			out[i] = o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
		}
	}
	return out
}

func cm(name string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  k: v\n", name)
}

func TestRenderDirectory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tree tree
		path string
		want []string
	}{
		{
			name: "nested directories, multi-document YAML, JSON and a List",
			path: "app",
			tree: tree{files: map[string]string{
				"app/a.yaml": cm("a") + "---\n# only a comment\n---\n" + cm("b") + "---\n",
				"app/b/c.yml": "apiVersion: v1\nkind: List\nitems:\n" +
					"- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: list-1\n" +
					"- apiVersion: v1\n  kind: Service\n  metadata:\n    name: list-2\n",
				"app/b/d/e.json":        `{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json-1"}}` + "\n" + `{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json-2"}}`,
				"app/c.yaml":            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n",
				"app/README.md":         "not a manifest",
				"app/.github/ci.yml":    "on: push\n",
				"app/.hidden.yaml":      "not: a manifest\n",
				"app/empty.yaml":        "",
				"other/ignored.yaml":    cm("outside-the-path"),
				"app/b/d/notes.txt":     "x",
				"app/b/d/nested/f.yaml": cm("deep"),
			}},
			want: []string{
				"ConfigMap apps/a", "ConfigMap apps/b",
				"ConfigMap apps/list-1", "Service apps/list-2",
				"ConfigMap apps/json-1", "ConfigMap apps/json-2",
				"ConfigMap apps/deep",
				"Namespace team",
			},
		},
		{
			name: "repository root",
			path: "",
			tree: tree{files: map[string]string{"x.yaml": cm("x"), "sub/y.yaml": cm("y")}},
			want: []string{"ConfigMap apps/y", "ConfigMap apps/x"},
		},
		{
			name: "symbolic links inside the repository",
			path: "app",
			tree: tree{
				files: map[string]string{"app/real.yaml": cm("real"), "shared/s.yaml": cm("shared")},
				links: map[string]string{
					// A file link leaving the path but not the repository.
					"app/link.yaml": "../shared/s.yaml",
					// A directory link is not descended into.
					"app/dirlink": "../shared",
					// Not a manifest, dangling: ignored.
					"app/dangling.txt": "nothing",
				},
			},
			want: []string{"ConfigMap apps/shared", "ConfigMap apps/real"},
		},
		{
			name: "path through a symbolic link inside the repository",
			path: "current",
			tree: tree{
				files: map[string]string{"v2/a.yaml": cm("v2")},
				links: map[string]string{"current": "v2"},
			},
			want: []string{"ConfigMap apps/v2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := tt.tree.write(t)
			objs, err := Render(t.Context(), root, &droverv1.AppAssignment{Path: tt.path, Namespace: "apps", Render: droverv1.RenderType_RENDER_TYPE_DIRECTORY})
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(objs); !slices.Equal(got, tt.want) {
				t.Errorf("objects\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		tree     tree
		a        *droverv1.AppAssignment
		wantPath string
		wantLine int
		wantMsg  []string
	}{
		{
			name:     "YAML syntax error names file and line",
			tree:     tree{files: map[string]string{"app/ok.yaml": cm("ok"), "app/bad.yaml": cm("a") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n   labels: x\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/bad.yaml",
			wantMsg:  []string{"document 2", "line 12"},
		},
		{
			name:     "JSON syntax error names file and line",
			tree:     tree{files: map[string]string{"app/bad.json": "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"ConfigMap\"\n  \"metadata\": {}\n}\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/bad.json",
			wantLine: 4,
			wantMsg:  []string{"invalid character"},
		},
		{
			name:     "missing kind names file and document",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a") + "---\n\n\napiVersion: v1\nmetadata:\n  name: b\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/a.yaml",
			wantLine: 10,
			wantMsg:  []string{"document 2", "kind is missing"},
		},
		{
			name:     "missing name in a List item",
			tree:     tree{files: map[string]string{"app/l.yaml": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {}\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/l.yaml",
			wantLine: 1,
			wantMsg:  []string{"document 1, item 1", "metadata.name is missing"},
		},
		{
			name:     "missing apiVersion",
			tree:     tree{files: map[string]string{"app/a.yaml": "kind: ConfigMap\nmetadata:\n  name: x\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/a.yaml",
			wantLine: 1,
			wantMsg:  []string{"apiVersion is missing"},
		},
		{
			name:     "document that is not an object",
			tree:     tree{files: map[string]string{"app/a.yaml": "- a\n- b\n"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/a.yaml",
			wantLine: 1,
			wantMsg:  []string{"not an object but a list"},
		},
		{
			name:    "path escaping with ..",
			tree:    tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:       &droverv1.AppAssignment{Path: "app/../../checkout"},
			wantMsg: []string{"leads outside the repository"},
		},
		{
			name:    "absolute path",
			tree:    tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:       &droverv1.AppAssignment{Path: "/etc"},
			wantMsg: []string{"must be relative"},
		},
		{
			name:     "path that does not exist",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:        &droverv1.AppAssignment{Path: "nope"},
			wantPath: "nope",
			wantMsg:  []string{"no such directory"},
		},
		{
			name:     "path that is a file",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:        &droverv1.AppAssignment{Path: "app/a.yaml"},
			wantPath: "app/a.yaml",
			wantMsg:  []string{"not a directory"},
		},
		{
			name:     "path through a symbolic link out of the repository",
			tree:     tree{links: map[string]string{"app": "../outside-dir"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app",
			wantMsg:  []string{"outside the repository"},
		},
		{
			name:     "file symbolic link out of the repository",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}, links: map[string]string{"app/b.yaml": "../../outside.yaml"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/b.yaml",
			wantMsg:  []string{"outside the repository"},
		},
		{
			name:     "directory symbolic link out of the repository",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}, links: map[string]string{"app/sub/d": "../../../outside-dir"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/sub/d",
			wantMsg:  []string{"outside the repository"},
		},
		{
			name:     "absolute symbolic link",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}, links: map[string]string{"app/b.yaml": "$PARENT/outside.yaml"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/b.yaml",
			wantMsg:  []string{"absolute"},
		},
		{
			name:     "symbolic link to a missing manifest",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("a")}, links: map[string]string{"app/b.yaml": "gone.yaml"}},
			a:        &droverv1.AppAssignment{Path: "app"},
			wantPath: "app/b.yaml",
			wantMsg:  []string{"does not exist"},
		},
		{
			name:     "duplicate objects name both files",
			tree:     tree{files: map[string]string{"app/a.yaml": cm("x"), "app/b/c.yaml": cm("y") + "---\n" + cm("x")}},
			a:        &droverv1.AppAssignment{Path: "app", Namespace: "apps"},
			wantPath: "app/b/c.yaml",
			wantLine: 8,
			wantMsg:  []string{"ConfigMap apps/x", "also defined in app/a.yaml:1"},
		},
		{
			name: "duplicate once the namespace is defaulted",
			tree: tree{files: map[string]string{
				"app/a.yaml": cm("x"),
				"app/b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: apps\n",
			}},
			a:        &droverv1.AppAssignment{Path: "app", Namespace: "apps"},
			wantPath: "app/b.yaml",
			wantLine: 1,
			wantMsg:  []string{"also defined in app/a.yaml"},
		},
		{
			name: "duplicate made by a variable",
			tree: tree{files: map[string]string{
				"app/a.yaml": cm("web-eu"),
				"app/b.yaml": cm("web-${cluster.labels.region}"),
			}},
			a:        &droverv1.AppAssignment{Path: "app", Variables: map[string]string{"cluster.labels.region": "eu"}},
			wantPath: "app/b.yaml",
			wantLine: 1,
			wantMsg:  []string{"also defined in app/a.yaml"},
		},
		{
			name:     "helm chart without a version",
			tree:     tree{files: map[string]string{"chart/Chart.yaml": "name: x\n"}},
			a:        &droverv1.AppAssignment{Path: "chart", Render: droverv1.RenderType_RENDER_TYPE_HELM},
			wantPath: "chart/Chart.yaml",
			wantMsg:  []string{"chart.metadata.version is required"},
		},
		{
			name:    "unknown render type",
			tree:    tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:       &droverv1.AppAssignment{Path: "app", Render: droverv1.RenderType(42)},
			wantMsg: []string{"not supported"},
		},
		{
			name:    "failing patch is named",
			tree:    tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:       &droverv1.AppAssignment{Path: "app", Patches: []*droverv1.KustomizePatch{{Patch: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: w\n"}, {Patch: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: missing\ndata:\n  k: w\n"}}},
			wantMsg: []string{"patches[1]"},
		},
		{
			name:    "empty patch",
			tree:    tree{files: map[string]string{"app/a.yaml": cm("a")}},
			a:       &droverv1.AppAssignment{Path: "app", Patches: []*droverv1.KustomizePatch{{Patch: "  "}}},
			wantMsg: []string{"patches[0].patch: must not be empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := tt.tree.write(t)
			objs, err := Render(t.Context(), root, tt.a)
			if err == nil {
				t.Fatalf("rendered %q", ids(objs))
			}
			t.Log(err)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error: %v", err, err)
			}
			if e.Path != tt.wantPath {
				t.Errorf("Path = %q, want %q", e.Path, tt.wantPath)
			}
			if e.Line != tt.wantLine {
				t.Errorf("Line = %d, want %d", e.Line, tt.wantLine)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			if tt.wantPath != "" && !strings.Contains(err.Error(), tt.wantPath) {
				t.Errorf("error %q does not name %q", err, tt.wantPath)
			}
			if strings.Contains(err.Error(), root) {
				t.Errorf("error %q names the checkout's absolute path", err)
			}
		})
	}
}

func TestRenderKustomize(t *testing.T) {
	t.Parallel()
	base := map[string]string{
		"base/kustomization.yaml": "resources:\n- deploy.yaml\n- cm.yaml\n",
		"base/deploy.yaml":        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n",
		"base/cm.yaml":            cm("settings"),
	}
	with := func(extra map[string]string) map[string]string {
		m := make(map[string]string, len(base)+len(extra))
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	t.Run("overlay with a base in a sibling directory", func(t *testing.T) {
		t.Parallel()
		root := tree{files: with(map[string]string{
			"overlays/prod/kustomization.yaml": "resources:\n- ../../base\nnamePrefix: prod-\npatches:\n- path: replicas.yaml\n",
			"overlays/prod/replicas.yaml":      "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
		})}.write(t)
		objs, err := Render(t.Context(), root, &droverv1.AppAssignment{Path: "overlays/prod", Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE, Namespace: "shop"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"Deployment shop/prod-web", "ConfigMap shop/prod-settings"}
		if got := ids(objs); !slices.Equal(got, want) {
			t.Fatalf("objects %q, want %q", got, want)
		}
		if r, _, _ := unstructured.NestedInt64(objs[0].Object, "spec", "replicas"); r != 3 {
			t.Errorf("replicas = %d, want 3", r)
		}
	})

	refused := []struct {
		name    string
		files   map[string]string
		links   map[string]string
		path    string
		wantMsg string
	}{
		{"remote resource URL", map[string]string{"app/kustomization.yaml": "resources:\n- https://example.com/manifests/cm.yaml\n"}, nil, "app", "remote reference"},
		{"remote git base", map[string]string{"app/kustomization.yaml": "resources:\n- github.com/org/repo//deploy?ref=v1\n"}, nil, "app", "remote reference"},
		{"scp-style git base", map[string]string{"app/kustomization.yaml": "resources:\n- git@example.com:org/repo.git\n"}, nil, "app", "remote reference"},
		{"file URL", map[string]string{"app/kustomization.yaml": "resources:\n- file:///etc/kubernetes\n"}, nil, "app", "remote reference"},
		{"remote component", map[string]string{"app/kustomization.yaml": "components:\n- https://example.com/c\n"}, nil, "app", "remote reference"},
		{"inline transformer with a remote path", map[string]string{"app/kustomization.yaml": "resources:\n- ../base\ntransformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata:\n    name: p\n  path: git::https://example.com/p.yaml\n"}, nil, "app", "transformers"},
		{"remote patch file", map[string]string{"app/kustomization.yaml": "resources:\n- ../base\npatches:\n- path: https://example.com/p.yaml\n"}, nil, "app", "patches"},
		{"remote generator source", map[string]string{"app/kustomization.yaml": "configMapGenerator:\n- name: x\n  files:\n  - k=https://example.com/f\n"}, nil, "app", "configMapGenerator"},
		{"remote reference in a base", map[string]string{"app/kustomization.yaml": "resources:\n- ../base\n", "base/kustomization.yaml": "resources:\n- deploy.yaml\n- https://example.com/x.yaml\n"}, nil, "app", "base/kustomization.yaml"},
		{"remote path in a transformer configuration", map[string]string{
			"app/kustomization.yaml": "resources:\n- ../base\ntransformers:\n- t.yaml\n",
			"app/t.yaml":             "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels:\n  a: b\n---\napiVersion: builtin\nkind: PatchTransformer\nmetadata:\n  name: p\npath: https://example.com/p.yaml\n",
		}, nil, "app", "transformers"},
		{"base outside the repository", map[string]string{"app/kustomization.yaml": "resources:\n- ../../outside-dir\n"}, nil, "app", "outside the repository"},
		{"resource linked out of the repository", map[string]string{"app/kustomization.yaml": "resources:\n- s.yaml\n"}, map[string]string{"app/s.yaml": "../../outside.yaml"}, "app", "outside the repository"},
		{"base linked out of the repository", map[string]string{"app/kustomization.yaml": "resources:\n- b\n"}, map[string]string{"app/b": "../../outside-dir"}, "app", "outside the repository"},
		{"kustomization linked out of the repository", nil, map[string]string{"app/kustomization.yaml": "../../outside.yaml"}, "app", "outside the repository"},
		{"no kustomization", map[string]string{"app/a.yaml": cm("a")}, nil, "app", "kustomization"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := tree{files: with(tt.files), links: tt.links}.write(t)
			objs, err := Render(t.Context(), root, &droverv1.AppAssignment{Path: tt.path, Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE})
			if err == nil {
				t.Fatalf("rendered %q", ids(objs))
			}
			t.Log(err)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			if strings.Contains(err.Error(), "outside-secret") {
				t.Errorf("error shows content from outside the repository: %v", err)
			}
		})
	}
}

func TestRenderPatchesAndVariables(t *testing.T) {
	t.Parallel()
	root := tree{files: map[string]string{
		"app/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    tier: front\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers:\n      - name: web\n        image: web:1\n        env:\n        - name: CLUSTER\n          value: ${cluster.name}\n        - name: REGION\n          value: region-${cluster.labels.region}\n        - name: UNKNOWN\n          value: ${not.a.variable}\n        - name: SHELL\n          value: ${cluster.name:-default}\n        - name: STRUCTURE\n          value: ${evil}\n",
		"app/worker.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: worker\n  labels:\n    tier: back\nspec:\n  replicas: 1\n",
		"app/gone.yaml":   cm("gone"),
	}}.write(t)
	a := &droverv1.AppAssignment{
		Path:      "app",
		Namespace: "shop",
		Patches: []*droverv1.KustomizePatch{
			// Strategic merge, naming its target itself; the value uses a
			// variable.
			{Patch: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    cluster: ${cluster.name}\nspec:\n  replicas: 3\n"},
			// JSON 6902 with a target by label selector.
			{Patch: "- op: replace\n  path: /spec/replicas\n  value: 5\n", Target: &droverv1.PatchTarget{Group: "apps", Kind: "Deployment", LabelSelector: "tier=back"}},
			// Deleting an object.
			{Patch: "$patch: delete\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: gone\n"},
		},
		Variables: map[string]string{
			"cluster.name":          "eu-1",
			"cluster.labels.region": "europe",
			"evil":                  "a: b\n- c\n${cluster.name}",
		},
	}
	objs, err := Render(t.Context(), root, a)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(objs), []string{"Deployment shop/web", "Deployment shop/worker"}; !slices.Equal(got, want) {
		t.Fatalf("objects %q, want %q", got, want)
	}
	web, worker := objs[0], objs[1]
	if r, _, _ := unstructured.NestedInt64(web.Object, "spec", "replicas"); r != 3 {
		t.Errorf("web replicas = %d, want 3", r)
	}
	if r, _, _ := unstructured.NestedInt64(worker.Object, "spec", "replicas"); r != 5 {
		t.Errorf("worker replicas = %d, want 5", r)
	}
	if got := web.GetAnnotations(); len(got) != 1 || got["cluster"] != "eu-1" {
		t.Errorf("web annotations = %v, want only cluster: eu-1", got)
	}
	if got := worker.GetAnnotations(); got != nil {
		t.Errorf("worker annotations = %v, want none", got)
	}
	containers, _, _ := unstructured.NestedSlice(web.Object, "spec", "template", "spec", "containers")
	env := map[string]any{}
	for _, e := range containers[0].(map[string]any)["env"].([]any) {
		m := e.(map[string]any)
		env[m["name"].(string)] = m["value"]
	}
	want := map[string]any{
		"CLUSTER":   "eu-1",
		"REGION":    "region-europe",
		"UNKNOWN":   "${not.a.variable}",
		"SHELL":     "${cluster.name:-default}",
		"STRUCTURE": "a: b\n- c\n${cluster.name}",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %#v, want %#v", k, env[k], v)
		}
	}
}

func TestRenderNamespaceDefaulting(t *testing.T) {
	t.Parallel()
	files := map[string]string{
		"app/a.yaml": cm("plain") +
			"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: explicit\n  namespace: other\n" +
			"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n" +
			"---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: reader\n" +
			"---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n" +
			"---\napiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n",
		"app/crd.yaml": "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.example.com\nspec:\n  group: example.com\n  scope: Cluster\n  names:\n    kind: Gadget\n    plural: gadgets\n",
	}
	root := tree{files: files}.write(t)
	a := &droverv1.AppAssignment{Path: "app", Namespace: "shop"}

	t.Run("built-in list", func(t *testing.T) {
		objs, err := Render(t.Context(), root, a)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"ConfigMap shop/plain", "ConfigMap other/explicit", "Namespace shop", "ClusterRole reader", "Widget shop/w", "Gadget g", "CustomResourceDefinition gadgets.example.com"}
		if got := ids(objs); !slices.Equal(got, want) {
			t.Errorf("objects\n got %q\nwant %q", got, want)
		}
	})
	t.Run("IsNamespaced", func(t *testing.T) {
		var asked []string
		o := Options{IsNamespaced: func(gvk schema.GroupVersionKind) (bool, error) {
			asked = append(asked, gvk.Kind)
			return gvk.Kind != "Widget" && gvk.Kind != "Namespace" && gvk.Kind != "ClusterRole" && gvk.Kind != "CustomResourceDefinition", nil
		}}
		objs, err := o.Render(t.Context(), root, a)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"ConfigMap shop/plain", "ConfigMap other/explicit", "Namespace shop", "ClusterRole reader", "Widget w", "Gadget g", "CustomResourceDefinition gadgets.example.com"}
		if got := ids(objs); !slices.Equal(got, want) {
			t.Errorf("objects\n got %q\nwant %q", got, want)
		}
		if slices.Contains(asked, "Gadget") {
			t.Error("asked about Gadget, which the render's CRD defines")
		}
		if n := len(asked); n != 5 {
			t.Errorf("asked %d times (%q); want once per kind, 5", n, asked)
		}
	})
	t.Run("IsNamespaced fails", func(t *testing.T) {
		boom := errors.New("discovery unavailable")
		o := Options{IsNamespaced: func(schema.GroupVersionKind) (bool, error) { return false, boom }}
		_, err := o.Render(t.Context(), root, a)
		var e *Error
		if !errors.Is(err, boom) || errors.As(err, &e) {
			t.Errorf("err = %v; want the IsNamespaced error, not an *Error", err)
		}
	})
}

func TestRenderLimits(t *testing.T) {
	t.Parallel()
	root := tree{files: map[string]string{"app/a.yaml": cm("a") + "---\n" + cm("b") + "---\n" + cm("c")}}.write(t)
	a := &droverv1.AppAssignment{Path: "app"}
	tests := []struct {
		o       Options
		a       *droverv1.AppAssignment
		wantMsg string
	}{
		{Options{MaxObjects: 2}, a, "more than 2 objects rendered, over the agent's limit per application (--max-render-objects)"},
		{Options{MaxBytes: 50}, a, "render app/a.yaml: with this file the manifests read add up to 200 bytes, over the agent's limit of 50 bytes per application (--max-render-bytes)"},
		// Variables grow objects after reading.
		{Options{MaxBytes: 400}, &droverv1.AppAssignment{Path: "app", Patches: []*droverv1.KustomizePatch{{Patch: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  big: ${big}\n"}}, Variables: map[string]string{"big": strings.Repeat("x", 1000)}}, "rendered objects exceed the agent's limit of 400 bytes per application (--max-render-bytes)"},
	}
	for _, tt := range tests {
		_, err := tt.o.Render(t.Context(), root, tt.a)
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), tt.wantMsg) {
			t.Errorf("%+v: err = %v, want an *Error containing %q", tt.o, err, tt.wantMsg)
		}
	}
	if _, err := (Options{MaxObjects: 3, MaxBytes: 1000}).Render(t.Context(), root, a); err != nil {
		t.Errorf("at the limits: %v", err)
	}
}

func TestRenderCancelled(t *testing.T) {
	t.Parallel()
	root := tree{files: map[string]string{"app/a.yaml": cm("a")}}.write(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Render(ctx, root, &droverv1.AppAssignment{Path: "app"})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// sized returns a ConfigMap manifest of exactly n bytes.
func sized(t *testing.T, name string, n int) string {
	t.Helper()
	head := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  pad: ", name)
	if n < len(head)+1 {
		t.Fatalf("a manifest of %d bytes is too small", n)
	}
	return head + strings.Repeat("x", n-len(head)-1) + "\n"
}

func kustomization(resources ...string) string {
	return "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- " + strings.Join(resources, "\n- ") + "\n"
}

func TestRenderFileLimit(t *testing.T) {
	t.Parallel()
	const limit = 300
	o := Options{MaxFileBytes: limit}
	kust := &droverv1.AppAssignment{Path: "app", Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE}
	dir := &droverv1.AppAssignment{Path: "app"}
	tests := []struct {
		name    string
		files   map[string]string
		a       *droverv1.AppAssignment
		wantErr string // "" means it renders
	}{
		{"directory, at the limit", map[string]string{"app/a.yaml": sized(t, "a", limit)}, dir, ""},
		{"directory, one byte over", map[string]string{"app/a.yaml": cm("a"), "app/big.yaml": sized(t, "big", limit+1)}, dir,
			"render app/big.yaml: 301 bytes is over the agent's limit of 300 bytes per manifest file (--max-manifest-bytes)"},
		{"kustomize, at the limit", map[string]string{"app/kustomization.yaml": kustomization("a.yaml"), "app/a.yaml": sized(t, "a", limit)}, kust, ""},
		{"kustomize, a resource one byte over", map[string]string{"app/kustomization.yaml": kustomization("a.yaml", "big.yaml"), "app/a.yaml": cm("a"), "app/big.yaml": sized(t, "big", limit+1)}, kust,
			"render app/big.yaml: 301 bytes is over the agent's limit of 300 bytes per manifest file (--max-manifest-bytes)"},
		{"kustomize, a base's resource one byte over", map[string]string{
			"app/kustomization.yaml":  kustomization("../base"),
			"base/kustomization.yaml": kustomization("big.yaml"), "base/big.yaml": sized(t, "big", limit+1)}, kust,
			"render base/big.yaml: 301 bytes is over the agent's limit of 300 bytes per manifest file (--max-manifest-bytes)"},
		{"kustomize, the kustomization itself over", map[string]string{"app/kustomization.yaml": kustomization("a.yaml") + "# " + strings.Repeat("x", limit) + "\n", "app/a.yaml": cm("a")}, kust,
			"render app/kustomization.yaml: 387 bytes is over the agent's limit of 300 bytes per manifest file (--max-manifest-bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := tree{files: tt.files}.write(t)
			objs, err := o.Render(t.Context(), root, tt.a)
			if tt.wantErr == "" {
				if err != nil || len(objs) != 1 {
					t.Fatalf("Render = %v, %v; want the one object at the limit", ids(objs), err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || err.Error() != tt.wantErr {
				t.Fatalf("err = %v; want the *Error %q", err, tt.wantErr)
			}
		})
	}
}

// TestRenderTotalLimit: files each under the per-file limit that add up to
// more than the application's limit fail the render, naming the file that
// went over, in both render types.
func TestRenderTotalLimit(t *testing.T) {
	t.Parallel()
	o := Options{MaxFileBytes: 300, MaxBytes: 500}
	files := map[string]string{"app/a.yaml": sized(t, "a", 200), "app/b.yaml": sized(t, "b", 200), "app/c.yaml": sized(t, "c", 200)}
	want := "render app/c.yaml: with this file the manifests read add up to 600 bytes, over the agent's limit of 500 bytes per application (--max-render-bytes)"
	root := tree{files: files}.write(t)
	_, err := o.Render(t.Context(), root, &droverv1.AppAssignment{Path: "app"})
	var e *Error
	if !errors.As(err, &e) || err.Error() != want {
		t.Errorf("directory: err = %v; want the *Error %q", err, want)
	}

	files["app/kustomization.yaml"] = kustomization("a.yaml", "b.yaml", "c.yaml")
	root = tree{files: files}.write(t)
	_, err = o.Render(t.Context(), root, &droverv1.AppAssignment{Path: "app", Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE})
	// Kustomize reads its kustomization first: it counts too.
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "over the agent's limit of 500 bytes per application (--max-render-bytes)") {
		t.Errorf("kustomize: err = %v; want an *Error naming the limit of 500 bytes", err)
	}

	// Under both limits, the same files render.
	if objs, err := (Options{MaxFileBytes: 300, MaxBytes: 700}).Render(t.Context(), tree{files: map[string]string{"app/a.yaml": files["app/a.yaml"], "app/b.yaml": files["app/b.yaml"], "app/c.yaml": files["app/c.yaml"]}}.write(t), &droverv1.AppAssignment{Path: "app"}); err != nil || len(objs) != 3 {
		t.Errorf("under the limits: %v, %v; want three objects", ids(objs), err)
	}
}

// TestRenderHugeFileIsNotRead: a 1 GiB manifest (sparse: it takes no disk)
// is refused from its size, with the default limits, without being read:
// the test's allocations stay far below its size. Not parallel, so that
// nothing else allocates meanwhile.
func TestRenderHugeFileIsNotRead(t *testing.T) {
	kust := &droverv1.AppAssignment{Path: "app", Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE}
	for _, tt := range []struct {
		name  string
		files map[string]string
		huge  string
		a     *droverv1.AppAssignment
	}{
		{"directory", map[string]string{"app/a.yaml": cm("a")}, "app/huge.yaml", &droverv1.AppAssignment{Path: "app"}},
		{"kustomize resource", map[string]string{"app/kustomization.yaml": kustomization("a.yaml", "huge.yaml"), "app/a.yaml": cm("a")}, "app/huge.yaml", kust},
		{"kustomization", map[string]string{"app/a.yaml": cm("a")}, "app/kustomization.yaml", kust},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := tree{files: tt.files}.write(t)
			huge := filepath.Join(root, filepath.FromSlash(tt.huge))
			if err := os.WriteFile(huge, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(huge, 1<<30); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Render(t.Context(), root, tt.a)
			runtime.ReadMemStats(&after)
			want := "render " + tt.huge + ": 1 GiB is over the agent's limit of 8 MiB per manifest file (--max-manifest-bytes)"
			var e *Error
			if !errors.As(err, &e) || err.Error() != want {
				t.Fatalf("err = %v; want the *Error %q", err, want)
			}
			// Kustomize's own start-up allocates some MiB; reading the
			// file would allocate 1 GiB.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
				t.Errorf("the render allocated %d MiB: the file was read", alloc>>20)
			}
		})
	}
}

// TestKustomizeSchemaIsNotKept: an application's OpenAPI schema (the
// kustomization's "openapi" field) leaves nothing behind once its build
// is done: Kustomize's process-global schema is the built-in one again.
// One that does not parse fails its application alone, where Kustomize
// would panic, and another application builds after it as before. Not
// parallel: the schema is the process's.
func TestKustomizeSchemaIsNotKept(t *testing.T) {
	kust := &droverv1.AppAssignment{Path: "app", Render: droverv1.RenderType_RENDER_TYPE_KUSTOMIZE}
	web := tree{files: map[string]string{
		"app/kustomization.yaml": "resources:\n- svc.yaml\npatches:\n- patch: |\n    apiVersion: v1\n    kind: Service\n    metadata:\n      name: web\n    spec:\n      ports:\n      - {port: 443, targetPort: 8443}\n",
		"app/svc.yaml":           "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - {port: 80, targetPort: 8080}\n",
	}}.write(t)
	// The built-in schema merges a Service's ports by port: the patch
	// adds one.
	checkWeb := func(when string) {
		t.Helper()
		if v := openapi.GetSchemaVersion(); v != builtinSchema {
			t.Errorf("%s: Kustomize's schema is %q, want the built-in %q", when, v, builtinSchema)
		}
		objs, err := Render(t.Context(), web, kust)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		ports, _, _ := unstructured.NestedSlice(objs[0].Object, "spec", "ports")
		if len(ports) != 2 {
			t.Fatalf("%s: ports = %v; want 80 and the patch's 443 (merged by port)", when, ports)
		}
	}
	checkWeb("first")

	schemaApp := func(schema string) string {
		return tree{files: map[string]string{
			"app/kustomization.yaml": "openapi:\n  path: schema.json\nresources:\n- a.yaml\npatches:\n- patch: |\n    apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: a\n    data:\n      x: y\n",
			"app/schema.json":        schema,
			"app/a.yaml":             cm("a"),
		}}.write(t)
	}
	if _, err := Render(t.Context(), schemaApp(`{"definitions": {}}`), kust); err != nil {
		t.Fatalf("an application with its own schema: %v", err)
	}
	checkWeb("after an application with its own schema")

	_, err := Render(t.Context(), schemaApp("not a schema {"), kust)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "invalid schema file") {
		t.Fatalf("an application with a schema that does not parse: err = %v; want an *Error saying so", err)
	}
	checkWeb("after an application with a schema that does not parse")
}
