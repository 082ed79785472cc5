package fleet

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// sha returns a stable, valid full commit SHA for a short name.
func sha(name string) string {
	s := sha1.Sum([]byte(name))
	return hex.EncodeToString(s[:])
}

func everywhere() *droverv1.Placement {
	return &droverv1.Placement{Selector: &droverv1.LabelSelector{}}
}

func matchLabels(kv ...string) *droverv1.LabelSelector {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &droverv1.LabelSelector{MatchLabels: m}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// richApp is an application using every field that reaches an assignment.
func richApp(name string) *App {
	return &App{
		Name:   name,
		Commit: sha("release-1"),
		Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://git.example.com/org/" + name + ".git", Ref: "main", Path: "deploy"},
			Render: &droverv1.Render{Type: "helm", Namespace: name, ValuesFiles: []string{"values-prod.yaml"},
				Values: mustStruct(map[string]any{"image": map[string]any{"tag": "v0"}})},
			Placement:  everywhere(),
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, Interval: "5m"},
			Overrides: []*droverv1.Override{
				{
					Selector:   &droverv1.LabelSelector{},
					Patches:    []*droverv1.KustomizePatch{{Patch: "p1"}},
					HelmValues: "replicas: 1\nimage: v1",
					Variables:  map[string]string{"domain": "example.com", "tier": "base"},
				},
				{
					Selector:   matchLabels("env", "dev"),
					Patches:    []*droverv1.KustomizePatch{{Patch: "never"}},
					HelmValues: "replicas: 99\n",
					Variables:  map[string]string{"tier": "dev"},
				},
				{
					Selector:   matchLabels("region", "eu"),
					Patches:    []*droverv1.KustomizePatch{{Patch: "p2", Target: &droverv1.PatchTarget{Kind: "Deployment", Name: "web"}}, {Patch: "p3"}},
					HelmValues: "replicas: 3\n",
					Variables:  map[string]string{"tier": "eu", "cluster.name": "spoofed"},
				},
			},
		},
		Credentials: &droverv1.RepoCredentials{Username: "bot", Password: "token-1"},
	}
}

func TestComputeAppliesOverridesInOrder(t *testing.T) {
	c := Cluster{Name: "prod-eu-1", Labels: map[string]string{"env": "prod", "region": "eu", "example.com/tier": "front"}}
	app := richApp("web")
	got := Compute(c, []*App{app})

	want := &droverv1.Assignment{
		Version: got.GetVersion(),
		Applications: []*droverv1.AppAssignment{{
			Name:       "web",
			RepoUrl:    "https://git.example.com/org/web.git",
			Commit:     sha("release-1"),
			Path:       "deploy",
			Render:     droverv1.RenderType_RENDER_TYPE_HELM,
			Namespace:  "web",
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, Interval: "5m"},
			Patches: []*droverv1.KustomizePatch{
				{Patch: "p1"},
				{Patch: "p2", Target: &droverv1.PatchTarget{Kind: "Deployment", Name: "web"}},
				{Patch: "p3"},
			},
			HelmValues:  "image:\n  tag: v0\n---\nreplicas: 1\nimage: v1\n---\nreplicas: 3\n",
			ReleaseName: "web",
			ValuesFiles: []string{"values-prod.yaml"},
			Variables: map[string]string{
				"domain":                          "example.com",
				"tier":                            "eu",
				"cluster.name":                    "prod-eu-1",
				"cluster.labels.env":              "prod",
				"cluster.labels.region":           "eu",
				"cluster.labels.example.com/tier": "front",
			},
			Credentials: &droverv1.RepoCredentials{Username: "bot", Password: "token-1"},
			Ref:         "main",
		}},
	}
	if !proto.Equal(want, got) {
		t.Fatalf("assignment:\n%s\nwant:\n%s", prototext.Format(got), prototext.Format(want))
	}
	if len(got.GetVersion()) != 32 {
		t.Errorf("version %q: want 32 hex characters", got.GetVersion())
	}

	// Fresh messages: changing the result changes nothing in the App.
	aa := got.GetApplications()[0]
	aa.SyncPolicy.Prune = false
	aa.Credentials.Password = "changed"
	aa.Patches[0].Patch = "changed"
	if !app.Spec.SyncPolicy.Prune || app.Credentials.Password != "token-1" || app.Spec.Overrides[0].Patches[0].Patch != "p1" {
		t.Fatalf("Compute shares messages with the App")
	}
}

func TestComputeRenderTypes(t *testing.T) {
	for typ, want := range map[string]droverv1.RenderType{
		"":          droverv1.RenderType_RENDER_TYPE_DIRECTORY,
		"directory": droverv1.RenderType_RENDER_TYPE_DIRECTORY,
		"kustomize": droverv1.RenderType_RENDER_TYPE_KUSTOMIZE,
		"helm":      droverv1.RenderType_RENDER_TYPE_HELM,
	} {
		app := &App{Name: "a", Commit: sha("x"), Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://h/r"}, Render: &droverv1.Render{Type: typ}, Placement: everywhere(),
		}}
		got := Compute(Cluster{Name: "c"}, []*App{app}).GetApplications()[0].GetRender()
		if got != want {
			t.Errorf("render %q: got %v, want %v", typ, got, want)
		}
	}
}

func TestComputeSelectsAndSorts(t *testing.T) {
	app := func(name, commit string, p *droverv1.Placement) *App {
		return &App{Name: name, Commit: commit, Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://h/" + name}, Placement: p,
		}}
	}
	pinned := app("pinned", sha("new"), everywhere())
	pinned.Pins = map[string]string{"c1": sha("old"), "c2": sha("other")}
	apps := []*App{
		app("zeta", sha("z"), everywhere()),
		app("unresolved", "", everywhere()),
		app("elsewhere", sha("e"), &droverv1.Placement{Selector: matchLabels("env", "dev")}),
		app("named", sha("n"), &droverv1.Placement{ClusterNames: []string{"c1"}}),
		app("nowhere", sha("w"), &droverv1.Placement{}),
		pinned,
		app("alpha", sha("a"), &droverv1.Placement{Selector: matchLabels("env", "prod")}),
	}
	got := Compute(Cluster{Name: "c1", Labels: map[string]string{"env": "prod"}}, apps)
	var names, commits []string
	for _, aa := range got.GetApplications() {
		names = append(names, aa.GetName())
		commits = append(commits, aa.GetCommit())
	}
	if want := []string{"alpha", "named", "pinned", "zeta"}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("applications = %v, want %v", names, want)
	}
	if commits[2] != sha("old") {
		t.Errorf("pinned application runs %s, want the pin %s", commits[2], sha("old"))
	}

	empty := Compute(Cluster{Name: "c9"}, []*App{app("unresolved", "", everywhere())})
	if len(empty.GetApplications()) != 0 || empty.GetVersion() == "" {
		t.Fatalf("cluster without resolved apps: got %v", empty)
	}
}

// TestComputeVersionIsStable rebuilds equal input with fresh maps (so Go
// iterates them in different orders) and wants one version.
func TestComputeVersionIsStable(t *testing.T) {
	build := func() (Cluster, []*App) {
		lbls := map[string]string{}
		for i := range 30 {
			lbls[fmt.Sprintf("label-%02d", i)] = fmt.Sprintf("v%d", i)
		}
		var apps []*App
		for i := range 5 {
			a := richApp(fmt.Sprintf("app-%d", i))
			vars := map[string]string{}
			for j := range 30 {
				vars[fmt.Sprintf("var%02d", j)] = fmt.Sprint(j)
			}
			a.Spec.Overrides[0].Variables = vars
			a.Pins = maps.Clone(map[string]string{"other": sha("p"), "c": sha("q")})
			apps = append(apps, a)
		}
		return Cluster{Name: "c", Labels: lbls}, apps
	}
	c, apps := build()
	want := Compute(c, apps).GetVersion()
	for i := range 100 {
		c, apps := build()
		// Reverse the input order too: the output is sorted.
		for l, r := 0, len(apps)-1; l < r; l, r = l+1, r-1 {
			apps[l], apps[r] = apps[r], apps[l]
		}
		if got := Compute(c, apps).GetVersion(); got != want {
			t.Fatalf("run %d: version %s, want %s", i, got, want)
		}
	}
}

func TestComputeVersionChangesWithContent(t *testing.T) {
	base := func() (Cluster, []*App) {
		return Cluster{Name: "c1", Labels: map[string]string{"env": "prod", "region": "eu"}},
			[]*App{richApp("web"), richApp("api")}
	}
	c, apps := base()
	baseVersion := Compute(c, apps).GetVersion()

	for _, tc := range []struct {
		name   string
		mutate func(c *Cluster, web *App, apps *[]*App)
	}{
		{"cluster name", func(c *Cluster, _ *App, _ *[]*App) { c.Name = "c2" }},
		{"label value", func(c *Cluster, _ *App, _ *[]*App) { c.Labels["env"] = "staging" }},
		{"new label", func(c *Cluster, _ *App, _ *[]*App) { c.Labels["tier"] = "front" }},
		{"label leaves an override", func(c *Cluster, _ *App, _ *[]*App) { c.Labels["region"] = "us" }},
		{"label enters an override", func(c *Cluster, _ *App, _ *[]*App) { c.Labels["env"] = "dev" }},
		{"commit", func(_ *Cluster, a *App, _ *[]*App) { a.Commit = sha("release-2") }},
		{"pin", func(_ *Cluster, a *App, _ *[]*App) { a.Pins = map[string]string{"c1": sha("release-0")} }},
		{"repo url", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Source.RepoUrl += "x" }},
		{"path", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Source.Path = "deploy/v2" }},
		{"render type", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Render.Type = "kustomize" }},
		{"namespace", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Render.Namespace = "other" }},
		{"automated", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.SyncPolicy.Automated = false }},
		{"prune", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.SyncPolicy.Prune = false }},
		{"self heal", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.SyncPolicy.SelfHeal = true }},
		{"sync interval", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.SyncPolicy.Interval = "10m" }},
		{"no sync policy", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.SyncPolicy = nil }},
		{"patch", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Overrides[0].Patches[0].Patch = "p1b" }},
		{"patch target", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Overrides[2].Patches[0].Target.Namespace = "x" }},
		{"patch order", func(_ *Cluster, a *App, _ *[]*App) {
			p := a.Spec.Overrides[2].Patches
			p[0], p[1] = p[1], p[0]
		}},
		{"override order", func(_ *Cluster, a *App, _ *[]*App) {
			o := a.Spec.Overrides
			o[0], o[2] = o[2], o[0]
		}},
		{"helm values", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Overrides[2].HelmValues = "replicas: 4\n" }},
		{"variable value", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Overrides[0].Variables["domain"] = "example.org" }},
		{"new variable", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Overrides[0].Variables["x"] = "" }},
		{"credentials password", func(_ *Cluster, a *App, _ *[]*App) { a.Credentials.Password = "token-2" }},
		{"credentials username", func(_ *Cluster, a *App, _ *[]*App) { a.Credentials.Username = "bot2" }},
		{"credentials removed", func(_ *Cluster, a *App, _ *[]*App) { a.Credentials = nil }},
		{"ssh key", func(_ *Cluster, a *App, _ *[]*App) { a.Credentials.SshPrivateKey = "k" }},
		{"app added", func(_ *Cluster, _ *App, apps *[]*App) { *apps = append(*apps, richApp("db")) }},
		{"app removed", func(_ *Cluster, _ *App, apps *[]*App) { *apps = (*apps)[1:] }},
		{"app unplaced", func(_ *Cluster, a *App, _ *[]*App) { a.Spec.Placement = &droverv1.Placement{} }},
		{"app unresolved", func(_ *Cluster, a *App, _ *[]*App) { a.Commit = "" }},
		{"app renamed", func(_ *Cluster, a *App, _ *[]*App) { a.Name = "web2" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, apps := base()
			tc.mutate(&c, apps[0], &apps)
			if got := Compute(c, apps).GetVersion(); got == baseVersion {
				t.Fatalf("version unchanged (%s)", got)
			}
		})
	}

	// Things that are not part of any cluster's content leave the version
	// alone.
	for _, tc := range []struct {
		name   string
		mutate func(a *App)
	}{
		{"ref", func(a *App) { a.Spec.Source.Ref = "release" }},
		{"poll interval", func(a *App) { a.Spec.Source.PollInterval = "5m" }},
		{"extra paths", func(a *App) { a.Spec.Source.ExtraPaths = []string{"base"} }},
		{"override for other clusters", func(a *App) { a.Spec.Overrides[1].HelmValues = "replicas: 100\n" }},
		{"pin for another cluster", func(a *App) { a.Pins = map[string]string{"c7": sha("release-0")} }},
	} {
		t.Run("same/"+tc.name, func(t *testing.T) {
			c, apps := base()
			tc.mutate(apps[0])
			if got := Compute(c, apps).GetVersion(); got != baseVersion {
				t.Fatalf("version changed")
			}
		})
	}
}

// TestComputeOverridesCannotSpoofCluster: validation refuses cluster.*
// variables, and Compute sets them last anyway.
func TestComputeOverridesCannotSpoofCluster(t *testing.T) {
	a := richApp("web")
	a.Spec.Overrides[0].Variables["cluster.labels.env"] = "spoofed"
	got := Compute(Cluster{Name: "real", Labels: map[string]string{"env": "prod", "region": "eu"}}, []*App{a})
	vars := got.GetApplications()[0].GetVariables()
	if vars["cluster.name"] != "real" || vars["cluster.labels.env"] != "prod" {
		t.Fatalf("variables %v let an override replace the cluster's identity", vars)
	}
	if want := referenceVersion(t, got); got.GetVersion() != want {
		t.Fatalf("version %s, content says %s", got.GetVersion(), want)
	}
}

func TestComputeLeavesOutBrokenSelectors(t *testing.T) {
	a := richApp("web")
	a.Spec.Placement.Selector.MatchExpressions = []*droverv1.LabelSelectorRequirement{{Key: "env", Operator: "Like"}}
	if got := Compute(Cluster{Name: "c"}, []*App{a, richApp("ok")}); len(got.GetApplications()) != 1 {
		t.Fatalf("got %d applications, want only the valid one", len(got.GetApplications()))
	}
}

func TestComputeResultIsIndependent(t *testing.T) {
	c := Cluster{Name: "c", Labels: map[string]string{"env": "prod"}}
	apps := []*App{richApp("web")}
	a1 := Compute(c, apps)
	a2 := Compute(c, apps)
	if !proto.Equal(a1, a2) {
		t.Fatalf("equal input, different assignments")
	}
	a1.GetApplications()[0].Variables["cluster.name"] = "x"
	if a2.GetApplications()[0].GetVariables()["cluster.name"] != "c" {
		t.Fatalf("two Compute results share a map")
	}
}

// referenceVersion computes an assignment's version from its content alone,
// the slow way: whatever path built the assignment, the version must be
// this.
func referenceVersion(t testing.TB, a *droverv1.Assignment) string {
	t.Helper()
	h := sha256.New()
	for _, aa := range a.GetApplications() {
		noVars := proto.CloneOf(aa)
		noVars.Variables = nil
		// The ref is a fetch hint, not content: see buildVariant.
		noVars.Ref = ""
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(noVars)
		if err != nil {
			t.Fatal(err)
		}
		d := digestVars(sha256.Sum256(b), aa.GetVariables())
		h.Write(d[:])
	}
	return versionOf(h)
}

func TestVersionIsContentHash(t *testing.T) {
	web, api := richApp("web"), richApp("api")
	api.Spec.Overrides = nil
	api.Credentials = nil
	api.Spec.SyncPolicy = nil
	for _, c := range []Cluster{
		{Name: "c1"},
		{Name: "c2", Labels: map[string]string{"env": "dev"}},
		{Name: "c3", Labels: map[string]string{"env": "prod", "region": "eu"}},
	} {
		got := Compute(c, []*App{web, api})
		if want := referenceVersion(t, got); got.GetVersion() != want {
			t.Errorf("%s: version %s, content says %s", c.Name, got.GetVersion(), want)
		}
	}
}

// TestComputeCarriesTheRef checks that an assignment says which ref its
// commit was resolved from, so an agent can fetch that ref shallowly: HEAD
// for the default branch, the spec's ref otherwise, and none for a pinned
// SHA.
func TestComputeCarriesTheRef(t *testing.T) {
	for specRef, want := range map[string]string{
		"":                    "HEAD",
		"HEAD":                "HEAD",
		"main":                "main",
		"refs/tags/v1.2":      "refs/tags/v1.2",
		sha("pinned-in-spec"): "",
	} {
		app := richApp("web")
		app.Spec.Source.Ref = specRef
		got := Compute(Cluster{Name: "c1"}, []*App{app}).GetApplications()
		if len(got) != 1 || got[0].GetRef() != want {
			t.Errorf("spec ref %q: assignment %v, want ref %q", specRef, got, want)
		}
	}
}
