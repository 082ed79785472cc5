package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// validSpec uses every part of a spec, so each case below breaks exactly
// one thing.
func validSpec() *droverv1.ApplicationSpec {
	return &droverv1.ApplicationSpec{
		Source: &droverv1.Source{
			RepoUrl:      "https://git.example.com/org/apps.git",
			Ref:          "main",
			Path:         "apps/web",
			ExtraPaths:   []string{"base", "./lib/../shared"},
			PollInterval: "1m",
		},
		Render: &droverv1.Render{Type: "kustomize", Namespace: "web"},
		Placement: &droverv1.Placement{
			Selector: &droverv1.LabelSelector{
				MatchLabels: map[string]string{"env": "prod", "example.com/tier": "front"},
				MatchExpressions: []*droverv1.LabelSelectorRequirement{
					{Key: "region", Operator: "In", Values: []string{"eu", "us"}},
					{Key: "legacy", Operator: "DoesNotExist"},
				},
			},
			ClusterNames: []string{"edge-1", "edge-2"},
		},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true, Interval: "5m"},
		Overrides: []*droverv1.Override{{
			Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}},
			Patches: []*droverv1.KustomizePatch{{
				Patch:  "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
				Target: &droverv1.PatchTarget{Kind: "Deployment", LabelSelector: "app=web,tier in (front)"},
			}},
			HelmValues: "replicas: 3\nimage:\n  tag: v2\n",
			Variables:  map[string]string{"domain": "eu.example.com", "db_host": "db.eu"},
		}},
	}
}

func TestValidateSpecAcceptsValid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*droverv1.ApplicationSpec)
	}{
		{"full spec", func(*droverv1.ApplicationSpec) {}},
		{"minimal spec", func(s *droverv1.ApplicationSpec) {
			*s = droverv1.ApplicationSpec{Source: &droverv1.Source{RepoUrl: "https://h/r"}}
		}},
		{"http", func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = "http://10.0.0.1:3000/org/r.git" }},
		{"ssh url", func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = "ssh://git@git.example.com:2222/org/r.git" }},
		{"ssh ipv6", func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = "ssh://git@[::1]:2222/org/r.git" }},
		{"scp style", func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = "git@github.com:org/repo.git" }},
		{"scp style without user", func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = "github.com:org/repo.git" }},
		{"directory render", func(s *droverv1.ApplicationSpec) { s.Render.Type = "directory" }},
		{"helm render", func(s *droverv1.ApplicationSpec) { s.Render.Type = "helm" }},
		{"default render", func(s *droverv1.ApplicationSpec) { s.Render = nil }},
		{"tag ref", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "v1.2.3" }},
		{"nested branch ref", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "release/2026-11" }},
		{"full ref", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "refs/tags/v1" }},
		{"commit ref", func(s *droverv1.ApplicationSpec) { s.Source.Ref = strings.Repeat("ab", 20) }},
		{"default branch", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "" }},
		{"root path", func(s *droverv1.ApplicationSpec) { s.Source.Path = "" }},
		{"dot path", func(s *droverv1.ApplicationSpec) { s.Source.Path = "./" }},
		{"path coming back inside", func(s *droverv1.ApplicationSpec) { s.Source.Path = "a/../b" }},
		{"dotdot in a name", func(s *droverv1.ApplicationSpec) { s.Source.Path = "a/..b" }},
		{"poll interval at minimum", func(s *droverv1.ApplicationSpec) { s.Source.PollInterval = "10s" }},
		{"empty selector", func(s *droverv1.ApplicationSpec) { s.Placement.Selector = &droverv1.LabelSelector{} }},
		{"no placement", func(s *droverv1.ApplicationSpec) { s.Placement = nil }},
		{"every operator", func(s *droverv1.ApplicationSpec) {
			s.Placement.Selector.MatchExpressions = []*droverv1.LabelSelectorRequirement{
				{Key: "a", Operator: "In", Values: []string{"x"}},
				{Key: "b", Operator: "NotIn", Values: []string{"x", "y"}},
				{Key: "c", Operator: "Exists"},
				{Key: "d", Operator: "DoesNotExist"},
			}
		}},
		{"override for every cluster", func(s *droverv1.ApplicationSpec) { s.Overrides[0].Selector = &droverv1.LabelSelector{} }},
		{"helm values null", func(s *droverv1.ApplicationSpec) { s.Overrides[0].HelmValues = "# nothing\n" }},
		{"json6902 patch", func(s *droverv1.ApplicationSpec) {
			s.Overrides[0].Patches[0].Patch = `[{"op": "replace", "path": "/spec/replicas", "value": 2}]`
		}},
		{"max overrides", func(s *droverv1.ApplicationSpec) {
			for len(s.Overrides) < MaxOverrides {
				s.Overrides = append(s.Overrides, proto.CloneOf(s.Overrides[0]))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.mutate(s)
			if err := ValidateSpec(s); err != nil {
				t.Fatalf("ValidateSpec: %v", err)
			}
		})
	}
}

func TestValidateSpecRejects(t *testing.T) {
	repo := func(u string) func(*droverv1.ApplicationSpec) {
		return func(s *droverv1.ApplicationSpec) { s.Source.RepoUrl = u }
	}
	expr := func(r *droverv1.LabelSelectorRequirement) func(*droverv1.ApplicationSpec) {
		return func(s *droverv1.ApplicationSpec) {
			s.Placement.Selector.MatchExpressions = []*droverv1.LabelSelectorRequirement{r}
		}
	}
	override := func(mutate func(*droverv1.Override)) func(*droverv1.ApplicationSpec) {
		return func(s *droverv1.ApplicationSpec) { mutate(s.Overrides[0]) }
	}
	const repoField = "spec.source.repoURL"
	for _, tc := range []struct {
		name   string
		mutate func(*droverv1.ApplicationSpec)
		field  string
	}{
		{"no source", func(s *droverv1.ApplicationSpec) { s.Source = nil }, repoField},
		{"no repo url", repo(""), repoField},
		{"file url", repo("file:///etc/passwd"), repoField},
		{"ext transport", repo("ext::sh -c touch% /tmp/pwned"), repoField},
		{"ext transport without spaces", repo("ext::evil"), repoField},
		{"git protocol", repo("git://git.example.com/r.git"), repoField},
		{"ftp", repo("ftp://git.example.com/r.git"), repoField},
		{"absolute local path", repo("/srv/git/r.git"), repoField},
		{"relative local path", repo("./r.git"), repoField},
		{"local path with colon", repo("./a:b/r.git"), repoField},
		{"bare word", repo("repo"), repoField},
		{"scp host option", repo("-oProxyCommand=touch:x/r.git"), repoField},
		{"scp empty path", repo("git@github.com:"), repoField},
		{"scp path option", repo("git@github.com:-u/r.git"), repoField},
		{"scp bad user", repo("a b@github.com:org/r.git"), repoField},
		{"https password", repo("https://bob:s3cret@git.example.com/r.git"), repoField},
		{"https token as user", repo("https://s3cret@git.example.com/r.git"), repoField},
		{"ssh password", repo("ssh://git:s3cret@git.example.com/r.git"), repoField},
		{"https no host", repo("https:///r.git"), repoField},
		{"https host option", repo("ssh://-oProxyCommand=x/r.git"), repoField},
		{"whitespace", repo("https://git.example.com/r .git"), repoField},
		{"newline", repo("https://git.example.com/r.git\nx"), repoField},
		{"too long", repo("https://git.example.com/" + strings.Repeat("a", MaxRepoURLLength)), repoField},

		{"ref option", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "--upload-pack=x" }, "spec.source.ref"},
		{"ref with space", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "my branch" }, "spec.source.ref"},
		{"ref with dotdot", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "a..b" }, "spec.source.ref"},
		{"ref with reflog syntax", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "main@{1}" }, "spec.source.ref"},
		{"ref with caret", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "HEAD^" }, "spec.source.ref"},
		{"ref ending in lock", func(s *droverv1.ApplicationSpec) { s.Source.Ref = "main.lock" }, "spec.source.ref"},
		{"ref too long", func(s *droverv1.ApplicationSpec) { s.Source.Ref = strings.Repeat("a", MaxRefLength+1) }, "spec.source.ref"},
		{"absolute path", func(s *droverv1.ApplicationSpec) { s.Source.Path = "/etc" }, "spec.source.path"},
		{"parent path", func(s *droverv1.ApplicationSpec) { s.Source.Path = ".." }, "spec.source.path"},
		{"escaping path", func(s *droverv1.ApplicationSpec) { s.Source.Path = "apps/../../x" }, "spec.source.path"},
		{"NUL in path", func(s *droverv1.ApplicationSpec) { s.Source.Path = "apps\x00x" }, "spec.source.path"},
		{"escaping extra path", func(s *droverv1.ApplicationSpec) { s.Source.ExtraPaths[1] = "../other" }, "spec.source.extraPaths[1]"},
		{"absolute extra path", func(s *droverv1.ApplicationSpec) { s.Source.ExtraPaths[0] = "/x" }, "spec.source.extraPaths[0]"},
		{"NUL in extra path", func(s *droverv1.ApplicationSpec) { s.Source.ExtraPaths[0] = "\x00" }, "spec.source.extraPaths[0]"},
		{"empty extra path", func(s *droverv1.ApplicationSpec) { s.Source.ExtraPaths[0] = "" }, "spec.source.extraPaths[0]"},
		{"too many extra paths", func(s *droverv1.ApplicationSpec) {
			s.Source.ExtraPaths = make([]string, MaxExtraPaths+1)
		}, "spec.source.extraPaths"},

		{"poll interval not a duration", func(s *droverv1.ApplicationSpec) { s.Source.PollInterval = "often" }, "spec.source.pollInterval"},
		{"poll interval without unit", func(s *droverv1.ApplicationSpec) { s.Source.PollInterval = "60" }, "spec.source.pollInterval"},
		{"poll interval too short", func(s *droverv1.ApplicationSpec) { s.Source.PollInterval = "9s" }, "spec.source.pollInterval"},
		{"poll interval negative", func(s *droverv1.ApplicationSpec) { s.Source.PollInterval = "-1m" }, "spec.source.pollInterval"},
		{"sync interval not a duration", func(s *droverv1.ApplicationSpec) { s.SyncPolicy.Interval = "5 minutes" }, "spec.syncPolicy.interval"},
		{"sync interval zero", func(s *droverv1.ApplicationSpec) { s.SyncPolicy.Interval = "0s" }, "spec.syncPolicy.interval"},

		{"unknown render type", func(s *droverv1.ApplicationSpec) { s.Render.Type = "jsonnet" }, "spec.render.type"},
		{"render type case", func(s *droverv1.ApplicationSpec) { s.Render.Type = "Helm" }, "spec.render.type"},
		{"bad namespace", func(s *droverv1.ApplicationSpec) { s.Render.Namespace = "Web_NS" }, "spec.render.namespace"},

		{"bad operator", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "Equals", Values: []string{"x"}}),
			"spec.placement.selector.matchExpressions[0].operator"},
		{"lower-case operator", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "in", Values: []string{"x"}}),
			"spec.placement.selector.matchExpressions[0].operator"},
		{"In without values", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "In"}),
			"spec.placement.selector.matchExpressions[0].values"},
		{"NotIn without values", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "NotIn"}),
			"spec.placement.selector.matchExpressions[0].values"},
		{"Exists with values", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "Exists", Values: []string{"x"}}),
			"spec.placement.selector.matchExpressions[0].values"},
		{"bad expression key", expr(&droverv1.LabelSelectorRequirement{Key: "bad key!", Operator: "Exists"}),
			"spec.placement.selector.matchExpressions[0].key"},
		{"empty expression key", expr(&droverv1.LabelSelectorRequirement{Key: "", Operator: "Exists"}),
			"spec.placement.selector.matchExpressions[0].key"},
		{"bad expression value", expr(&droverv1.LabelSelectorRequirement{Key: "env", Operator: "In", Values: []string{"a/b"}}),
			"spec.placement.selector.matchExpressions[0].values[0]"},
		{"bad match label key", func(s *droverv1.ApplicationSpec) {
			s.Placement.Selector.MatchLabels = map[string]string{"-env": "prod"}
		}, "spec.placement.selector.matchLabels[-env]"},
		{"bad match label value", func(s *droverv1.ApplicationSpec) {
			s.Placement.Selector.MatchLabels = map[string]string{"env": strings.Repeat("x", 64)}
		}, "spec.placement.selector.matchLabels[env]"},
		{"bad cluster name", func(s *droverv1.ApplicationSpec) { s.Placement.ClusterNames[1] = "Edge_2" }, "spec.placement.clusterNames[1]"},
		{"empty cluster name", func(s *droverv1.ApplicationSpec) { s.Placement.ClusterNames[0] = "" }, "spec.placement.clusterNames[0]"},
		{"duplicate cluster name", func(s *droverv1.ApplicationSpec) { s.Placement.ClusterNames[1] = "edge-1" }, "spec.placement.clusterNames[1]"},

		{"override without selector", override(func(o *droverv1.Override) { o.Selector = nil }), "spec.overrides[0].selector"},
		{"override bad operator", override(func(o *droverv1.Override) {
			o.Selector.MatchExpressions = []*droverv1.LabelSelectorRequirement{{Key: "env", Operator: "Like"}}
		}), "spec.overrides[0].selector.matchExpressions[0].operator"},
		{"override bad label", override(func(o *droverv1.Override) {
			o.Selector.MatchLabels = map[string]string{"env": "a b"}
		}), "spec.overrides[0].selector.matchLabels[env]"},
		{"empty patch", override(func(o *droverv1.Override) { o.Patches[0].Patch = " \n" }), "spec.overrides[0].patches[0].patch"},
		{"patch not YAML", override(func(o *droverv1.Override) { o.Patches[0].Patch = "a: [1\n" }), "spec.overrides[0].patches[0].patch"},
		{"patch target selector", override(func(o *droverv1.Override) { o.Patches[0].Target.LabelSelector = "app in web" }),
			"spec.overrides[0].patches[0].target.labelSelector"},
		{"too many patches", override(func(o *droverv1.Override) {
			for len(o.Patches) <= MaxPatchesPerOverride {
				o.Patches = append(o.Patches, proto.CloneOf(o.Patches[0]))
			}
		}), "spec.overrides[0].patches"},
		{"helm values not a mapping", override(func(o *droverv1.Override) { o.HelmValues = "- a\n- b\n" }), "spec.overrides[0].helmValues"},
		{"helm values not YAML", override(func(o *droverv1.Override) { o.HelmValues = "a: {b\n" }), "spec.overrides[0].helmValues"},
		{"helm values a scalar", override(func(o *droverv1.Override) { o.HelmValues = "s3cret\n" }), "spec.overrides[0].helmValues"},
		{"helm values two documents", override(func(o *droverv1.Override) { o.HelmValues = "a: 1\n---\nb: 2\n" }), "spec.overrides[0].helmValues"},
		{"reserved variable", override(func(o *droverv1.Override) { o.Variables = map[string]string{"cluster.name": "x"} }),
			"spec.overrides[0].variables[cluster.name]"},
		{"reserved variable prefix", override(func(o *droverv1.Override) { o.Variables = map[string]string{"cluster.labels.env": "x"} }),
			"spec.overrides[0].variables[cluster.labels.env]"},
		{"bad variable name", override(func(o *droverv1.Override) { o.Variables = map[string]string{"1st": "x"} }),
			"spec.overrides[0].variables[1st]"},
		{"variable name with brace", override(func(o *droverv1.Override) { o.Variables = map[string]string{"a}": "x"} }),
			"spec.overrides[0].variables[a}]"},
		{"too many overrides", func(s *droverv1.ApplicationSpec) {
			for len(s.Overrides) <= MaxOverrides {
				s.Overrides = append(s.Overrides, proto.CloneOf(s.Overrides[0]))
			}
		}, "spec.overrides"},
		{"oversized", func(s *droverv1.ApplicationSpec) {
			s.Overrides[0].Variables["big"] = strings.Repeat("x", MaxSpecSizeBytes)
		}, "spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.mutate(s)
			assertFieldErrors(t, ValidateSpec(s), tc.field)
		})
	}
}

func TestValidateSpecNil(t *testing.T) {
	assertFieldErrors(t, ValidateSpec(nil), "spec")
}

// TestValidateSpecListsEveryProblem checks that one answer names every bad
// field, in field order.
func TestValidateSpecListsEveryProblem(t *testing.T) {
	s := validSpec()
	s.Source.RepoUrl = "file:///x"
	s.Render.Type = "jsonnet"
	s.Overrides[0].Selector = nil
	var fes FieldErrors
	if !errors.As(ValidateSpec(s), &fes) {
		t.Fatalf("want FieldErrors")
	}
	var got []string
	for _, fe := range fes {
		got = append(got, fe.Field)
	}
	want := []string{"spec.source.repoURL", "spec.render.type", "spec.overrides[0].selector"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fields = %v, want %v", got, want)
	}
}

func TestValidateSpecNeverEchoesCredentials(t *testing.T) {
	for _, u := range []string{
		"https://bob:s3cret@git.example.com/r.git",
		"https://s3cret@git.example.com/r.git",
		"ssh://git:s3cret@git.example.com/r.git",
		"https://bob:s3cret@git.example.com:badport/r.git",
		"ftp://bob:s3cret@git.example.com/r.git",
	} {
		s := validSpec()
		s.Source.RepoUrl = u
		err := ValidateSpec(s)
		if err == nil {
			t.Fatalf("%s accepted", u)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error echoes the secret: %v", err)
		}
	}
}

func TestValidateSpecNeverEchoesHelmValues(t *testing.T) {
	for _, hv := range []string{"s3cret\n", "- s3cret\n", "a: 1\n---\npassword: s3cret\n"} {
		s := validSpec()
		s.Overrides[0].HelmValues = hv
		err := ValidateSpec(s)
		if err == nil {
			t.Fatalf("%q accepted", hv)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error echoes the values: %v", err)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"prod-eu-1", true},
		{"a", true},
		{"0cluster", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"Prod", false},
		{"prod_eu", false},
		{"prod.eu", false},
		{"-prod", false},
		{"prod-", false},
		{"pröd", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName(tc.name)
			if tc.ok {
				if err != nil {
					t.Fatalf("ValidateName: %v", err)
				}
				return
			}
			assertFieldErrors(t, err, "name")
		})
	}
}

func TestValidateLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		field  string // "" means valid
	}{
		{"none", nil, ""},
		{"plain", map[string]string{"env": "prod", "topology.kubernetes.io/region": "eu-west-1", "empty": ""}, ""},
		{"bad key", map[string]string{"env!": "prod"}, "labels[env!]"},
		{"bad prefix", map[string]string{"Example.com/env": "prod"}, "labels[Example.com/env]"},
		{"bad value", map[string]string{"env": "prod eu"}, "labels[env]"},
		{"long value", map[string]string{"env": strings.Repeat("x", 64)}, "labels[env]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateLabels(tc.labels)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("ValidateLabels: %v", err)
				}
				return
			}
			assertFieldErrors(t, err, tc.field)
		})
	}
}

// assertFieldErrors checks that err lists at least one problem and that
// every problem is about field.
func assertFieldErrors(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one for %s", field)
	}
	var fes FieldErrors
	if !errors.As(err, &fes) || len(fes) == 0 {
		t.Fatalf("error %v (%T) is not FieldErrors", err, err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != field {
		t.Errorf("errors.As(*FieldError) = %v, want field %s", fe, field)
	}
	for _, fe := range fes {
		if fe.Field != field {
			t.Errorf("error about %s (%s), want only %s", fe.Field, fe.Msg, field)
		}
		if fe.Msg == "" {
			t.Errorf("error about %s has no message", fe.Field)
		}
	}
}

// TestValidateSpecArtifactSources checks Helm repository and OCI sources:
// what each accepts, and that each mistake is one error on the field at
// fault, saying how to fix it.
func TestValidateSpecArtifactSources(t *testing.T) {
	helm := func(url, chart, version string, insecure bool) *droverv1.Source {
		return &droverv1.Source{RepoUrl: url, Chart: chart, Version: version, Insecure: insecure}
	}
	oci := func(url, version string) *droverv1.Source {
		return &droverv1.Source{RepoUrl: url, Version: version}
	}
	for _, src := range []*droverv1.Source{
		helm("https://charts.example.com", "web", "", false),
		helm("https://charts.example.com/stable/", "web-app_2.x", "1.2.3", false),
		helm("https://charts.example.com", "web", "~1.2", false),
		helm("https://charts.example.com", "web", ">=1.0.0 <2.0.0", false),
		helm("http://charts.internal:8080", "web", "1.2.x", true),
		oci("oci://registry.example.com/charts/web", ""),
		oci("oci://127.0.0.1:5000/team/manifests", "latest"),
		oci("oci://registry.example.com/charts/web", "^1"),
		oci("oci://registry.example.com/charts/web", "1.2.3+build.4"),
		{RepoUrl: "oci://registry.example.com/manifests", Path: "overlays/prod", Version: "v2"},
		{RepoUrl: "oci://registry.example.com/manifests", Insecure: true},
	} {
		s := validSpec()
		s.Source = src
		if SourceType(src) == droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY {
			s.Render = &droverv1.Render{Type: "helm"}
		}
		if err := ValidateSpec(s); err != nil {
			t.Errorf("%v: %v", src, err)
		}
	}
	s := validSpec()
	s.Source = helm("https://charts.example.com", "web", "", false)
	err := ValidateSpec(s) // validSpec renders with kustomize
	assertFieldErrors(t, err, "spec.render.type")
	if err == nil || !strings.Contains(err.Error(), "render it with type: helm") {
		t.Errorf("a chart rendered with kustomize: %v", err)
	}

	for _, tc := range []struct {
		name  string
		src   *droverv1.Source
		field string
		msg   string
	}{
		{"helm over http", helm("http://charts.example.com", "web", "", false), "spec.source.repoURL", "http:// sends the chart in the clear; set insecure: true to allow it"},
		{"helm over ssh", helm("ssh://charts.example.com/r", "web", "", false), "spec.source.repoURL", "https://"},
		{"helm with credentials", helm("https://bob:s3cret@charts.example.com", "web", "", false), "spec.source.repoURL", "must not contain credentials"},
		{"helm bad chart", helm("https://charts.example.com", "../web", "", false), "spec.source.chart", "not a chart name"},
		{"helm bad version", helm("https://charts.example.com", "web", ">=foo", false), "spec.source.version", "neither a version, an OCI tag nor a semantic version range"},
		{"helm with ref", &droverv1.Source{RepoUrl: "https://charts.example.com", Chart: "web", Ref: "main"}, "spec.source.ref", "set version instead"},
		{"helm with path", &droverv1.Source{RepoUrl: "https://charts.example.com", Chart: "web", Path: "sub"}, "spec.source.path", "path must be empty"},
		{"helm with extra paths", &droverv1.Source{RepoUrl: "https://charts.example.com", Chart: "web", ExtraPaths: []string{"x"}}, "spec.source.extraPaths", "no extra paths"},
		{"oci without path", oci("oci://registry.example.com", ""), "spec.source.repoURL", "oci://HOST[:PORT]/PATH"},
		{"oci with tag", oci("oci://registry.example.com/charts/web:1.0.0", ""), "spec.source.repoURL", "the version goes in version"},
		{"oci with credentials", oci("oci://bob:s3cret@registry.example.com/charts/web", ""), "spec.source.repoURL", "no credentials"},
		{"oci upper-case path", oci("oci://registry.example.com/Charts/web", ""), "spec.source.repoURL", "lower-case"},
		{"oci with chart", &droverv1.Source{RepoUrl: "oci://registry.example.com/charts/web", Chart: "web"}, "spec.source.chart", "only for Helm repositories"},
		{"oci bad version", oci("oci://registry.example.com/charts/web", "1.0 beta"), "spec.source.version", "semantic version range"},
		{"oci escaping path", &droverv1.Source{RepoUrl: "oci://registry.example.com/m", Path: "../x"}, "spec.source.path", ""},
		{"oci with ref", &droverv1.Source{RepoUrl: "oci://registry.example.com/m", Ref: "main"}, "spec.source.ref", "set version instead"},
		{"git with version", &droverv1.Source{RepoUrl: "https://git.example.com/r.git", Version: "1.0.0"}, "spec.source.version", "a Git source has a ref"},
		{"git insecure", &droverv1.Source{RepoUrl: "https://git.example.com/r.git", Insecure: true}, "spec.source.insecure", "plain HTTP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			s.Source = tc.src
			s.Render = &droverv1.Render{Type: "helm"}
			err := ValidateSpec(s)
			assertFieldErrors(t, err, tc.field)
			if err != nil && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error echoes the secret: %v", err)
			}
		})
	}
}
