package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// changed returns a copy of app with a copy of its spec changed by edit:
// the Fleet keeps the spec it was given, which is never changed after.
func changed(app *App, edit func(*droverv1.ApplicationSpec)) *App {
	cp := *app
	cp.Spec = proto.CloneOf(app.Spec)
	edit(cp.Spec)
	return &cp
}

func simpleApp(name string, commit string, p *droverv1.Placement) *App {
	return &App{Name: name, Commit: commit, Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: "https://git.example.com/" + name},
		Placement: p,
	}}
}

func appNames(a *droverv1.Assignment) []string {
	var names []string
	for _, aa := range a.GetApplications() {
		names = append(names, aa.GetName())
	}
	return names
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFleetRelabelGainsAndLosesApp(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetApp(simpleApp("web", sha("1"), &droverv1.Placement{Selector: matchLabels("env", "prod")})))
	must(t, f.SetCluster("c1", map[string]string{"env": "dev"}))

	snap, ch := f.Watch("c1")
	if snap == nil || len(snap.Assignment.GetApplications()) != 0 || len(f.AppsOn("c1")) != 0 {
		t.Fatalf("dev cluster runs %v", appNames(snap.Assignment))
	}

	must(t, f.SetCluster("c1", map[string]string{"env": "prod"}))
	if !closed(ch) {
		t.Fatal("relabel into the selector did not wake the cluster")
	}
	snap, ch = f.Watch("c1")
	if got := appNames(snap.Assignment); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("prod cluster runs %v, want [web]", got)
	}
	if got := f.PlacedClusters("web"); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("PlacedClusters = %v", got)
	}
	if got := f.AppsOn("c1"); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("AppsOn = %v", got)
	}

	must(t, f.SetCluster("c1", map[string]string{"env": "prod", "tier": "front"}))
	if !closed(ch) {
		t.Fatal("a new label (a new cluster.labels variable) did not wake the cluster")
	}
	_, ch = f.Watch("c1")

	must(t, f.SetCluster("c1", nil))
	if !closed(ch) {
		t.Fatal("relabel out of the selector did not wake the cluster")
	}
	if got := appNames(f.Assignment("c1")); len(got) != 0 {
		t.Fatalf("unlabelled cluster runs %v", got)
	}
	if got := f.PlacedClusters("web"); len(got) != 0 {
		t.Fatalf("PlacedClusters = %v, want none", got)
	}
}

func TestFleetAppSelectorChange(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetCluster("prod", map[string]string{"env": "prod"}))
	must(t, f.SetCluster("dev", map[string]string{"env": "dev"}))
	must(t, f.SetCluster("other", map[string]string{"env": "other"}))
	app := simpleApp("web", sha("1"), &droverv1.Placement{Selector: matchLabels("env", "prod")})
	must(t, f.SetApp(app))

	_, prodCh := f.Watch("prod")
	_, devCh := f.Watch("dev")
	_, otherCh := f.Watch("other")

	app = changed(app, func(s *droverv1.ApplicationSpec) { s.Placement.Selector = matchLabels("env", "dev") })
	must(t, f.SetApp(app))
	if !closed(prodCh) || !closed(devCh) {
		t.Fatalf("woken: prod %v, dev %v; want both", closed(prodCh), closed(devCh))
	}
	if closed(otherCh) {
		t.Fatal("a cluster placed neither before nor after was woken")
	}
	if got := appNames(f.Assignment("prod")); len(got) != 0 {
		t.Fatalf("prod runs %v after the selector moved away", got)
	}
	if got := appNames(f.Assignment("dev")); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("dev runs %v, want [web]", got)
	}
	if got := f.PlacedClusters("web"); !slices.Equal(got, []string{"dev"}) {
		t.Fatalf("PlacedClusters = %v", got)
	}

	// Names add to the selector.
	app = changed(app, func(s *droverv1.ApplicationSpec) { s.Placement.ClusterNames = []string{"other"} })
	must(t, f.SetApp(app))
	if got := f.PlacedClusters("web"); !slices.Equal(got, []string{"dev", "other"}) {
		t.Fatalf("PlacedClusters = %v", got)
	}
}

func TestFleetSetCommitWakesExactlyThePlacedClusters(t *testing.T) {
	f := New(testlog.New(t))
	for i, env := range []string{"prod", "prod", "prod", "dev", "dev"} {
		must(t, f.SetCluster(fmt.Sprintf("c%d", i), map[string]string{"env": env}))
	}
	web := simpleApp("web", sha("1"), &droverv1.Placement{Selector: matchLabels("env", "prod")})
	web.Pins = map[string]string{"c2": sha("1")} // c2 stays on release 1
	must(t, f.SetApp(web))
	must(t, f.SetApp(simpleApp("api", sha("a"), everywhere())))

	chans := map[string]<-chan struct{}{}
	for i := range 5 {
		name := fmt.Sprintf("c%d", i)
		_, chans[name] = f.Watch(name)
	}
	must(t, f.SetCommit("web", sha("2")))
	for name, ch := range chans {
		want := name == "c0" || name == "c1"
		if closed(ch) != want {
			t.Errorf("%s woken = %v, want %v", name, closed(ch), want)
		}
	}
	if c := f.Assignment("c0").GetApplications()[1].GetCommit(); c != sha("2") {
		t.Errorf("c0 runs web at %s, want %s", c, sha("2"))
	}
	if c := f.Assignment("c2").GetApplications()[1].GetCommit(); c != sha("1") {
		t.Errorf("pinned c2 runs web at %s, want %s", c, sha("1"))
	}
}

func TestFleetWatchCoalesces(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetCluster("c1", nil))
	must(t, f.SetApp(simpleApp("web", sha("0"), everywhere())))
	first, ch := f.Watch("c1")

	// The watcher is busy while five releases go out.
	for i := 1; i <= 5; i++ {
		must(t, f.SetCommit("web", sha(fmt.Sprint(i))))
	}
	if !closed(ch) {
		t.Fatal("not woken")
	}
	snap, ch := f.Watch("c1")
	if got := snap.Assignment.GetApplications()[0].GetCommit(); got != sha("5") {
		t.Fatalf("woken watcher sees commit %s, want the last one %s", got, sha("5"))
	}
	if snap.Version == first.Version || snap.Assignment.GetVersion() != snap.Version {
		t.Fatalf("versions: first %s, now %s, assignment %s", first.Version, snap.Version, snap.Assignment.GetVersion())
	}
	if closed(ch) {
		t.Fatal("new watch channel already closed")
	}
	// The first snapshot was not touched by the later ones.
	if got := first.Assignment.GetApplications()[0].GetCommit(); got != sha("0") {
		t.Fatalf("a published snapshot changed: commit %s", got)
	}
}

func TestFleetUnchangedRecomputeDoesNotWake(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetCluster("c1", map[string]string{"env": "prod", "region": "eu"}))
	web := richApp("web")
	must(t, f.SetApp(web))
	snap, ch := f.Watch("c1")

	steps := []struct {
		name string
		do   func() error
	}{
		{"same app again", func() error { return f.SetApp(web) }},
		{"same labels again", func() error { return f.SetCluster("c1", map[string]string{"region": "eu", "env": "prod"}) }},
		{"same commit again", func() error { return f.SetCommit("web", web.Commit) }},
		{"ref changed", func() error {
			web = changed(web, func(s *droverv1.ApplicationSpec) { s.Source.Ref = "release" })
			return f.SetApp(web)
		}},
		{"override of other clusters changed", func() error {
			web = changed(web, func(s *droverv1.ApplicationSpec) { s.Overrides[1].Variables = map[string]string{"x": "y"} })
			return f.SetApp(web)
		}},
		{"unresolved app placed", func() error { return f.SetApp(simpleApp("later", "", everywhere())) }},
		{"app placed elsewhere", func() error {
			return f.SetApp(simpleApp("dev-only", sha("d"), &droverv1.Placement{Selector: matchLabels("env", "dev")}))
		}},
		{"cluster added", func() error { return f.SetCluster("c2", map[string]string{"env": "prod"}) }},
		{"other cluster removed", func() error { f.RemoveCluster("c2"); return nil }},
		{"unresolved app removed", func() error { f.RemoveApp("later"); return nil }},
		{"unknown app removed", func() error { f.RemoveApp("nope"); return nil }},
	}
	for _, s := range steps {
		must(t, s.do())
		if closed(ch) {
			t.Fatalf("%s woke the cluster", s.name)
		}
		if now, _ := f.Watch("c1"); now != snap {
			t.Fatalf("%s replaced the snapshot", s.name)
		}
	}
	if got := f.AppsOn("c1"); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("AppsOn = %v", got)
	}
}

func TestFleetClusterLifecycle(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetApp(simpleApp("web", sha("1"), everywhere())))

	snap, ch := f.Watch("new")
	if snap != nil {
		t.Fatalf("unknown cluster has snapshot %v", snap)
	}
	if f.Assignment("new") != nil || f.AppsOn("new") != nil {
		t.Fatal("unknown cluster has an assignment")
	}
	must(t, f.SetCluster("new", nil))
	if !closed(ch) {
		t.Fatal("creating the cluster did not wake its watcher")
	}
	snap, ch = f.Watch("new")
	if got := appNames(snap.Assignment); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("new cluster runs %v", got)
	}

	f.RemoveCluster("new")
	if !closed(ch) {
		t.Fatal("removing the cluster did not wake its watcher")
	}
	if snap, _ := f.Watch("new"); snap != nil {
		t.Fatal("removed cluster still has a snapshot")
	}
	if got := f.PlacedClusters("web"); len(got) != 0 {
		t.Fatalf("PlacedClusters after removal = %v", got)
	}
	f.RemoveCluster("new") // twice is fine
}

func TestFleetRemoveApp(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetCluster("c1", nil))
	must(t, f.SetCluster("c2", nil))
	must(t, f.SetApp(simpleApp("web", sha("1"), &droverv1.Placement{ClusterNames: []string{"c1"}})))
	_, ch1 := f.Watch("c1")
	_, ch2 := f.Watch("c2")
	f.RemoveApp("web")
	if !closed(ch1) || closed(ch2) {
		t.Fatalf("woken: c1 %v (want true), c2 %v (want false)", closed(ch1), closed(ch2))
	}
	if got := appNames(f.Assignment("c1")); len(got) != 0 {
		t.Fatalf("c1 runs %v", got)
	}
	if f.PlacedClusters("web") != nil {
		t.Fatal("removed app still placed")
	}
	if err := f.SetCommit("web", sha("2")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetCommit on a removed app: %v, want ErrNotFound", err)
	}
}

func TestFleetRefusesBadInputAndKeepsState(t *testing.T) {
	f := New(testlog.New(t))
	must(t, f.SetCluster("c1", map[string]string{"env": "prod"}))
	good := simpleApp("web", sha("1"), everywhere())
	must(t, f.SetApp(good))
	before, ch := f.Watch("c1")

	badSelector := simpleApp("web", sha("2"), &droverv1.Placement{Selector: &droverv1.LabelSelector{
		MatchExpressions: []*droverv1.LabelSelectorRequirement{{Key: "env", Operator: "Like"}},
	}})
	badOverride := simpleApp("web", sha("2"), everywhere())
	badOverride.Spec.Overrides = []*droverv1.Override{{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "a b"}}}}
	badUTF8 := simpleApp("web", sha("2"), everywhere())
	badUTF8.Spec.Render = &droverv1.Render{Namespace: "\xff"}
	badCreds := simpleApp("web", sha("2"), everywhere())
	badCreds.Credentials = &droverv1.RepoCredentials{Password: "\xffs3cret"}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"nil app", f.SetApp(nil)},
		{"bad app name", f.SetApp(simpleApp("Web", sha("2"), everywhere()))},
		{"no spec", f.SetApp(&App{Name: "web", Commit: sha("2")})},
		{"short commit", f.SetApp(simpleApp("web", "abc123", everywhere()))},
		{"upper-case commit", f.SetApp(simpleApp("web", strings.ToUpper(sha("2")), everywhere()))},
		{"bad pin", f.SetApp(&App{Name: "web", Commit: sha("2"), Spec: good.Spec, Pins: map[string]string{"c1": "main"}})},
		{"empty pin", f.SetApp(&App{Name: "web", Commit: sha("2"), Spec: good.Spec, Pins: map[string]string{"c1": ""}})},
		{"bad selector", f.SetApp(badSelector)},
		{"bad override selector", f.SetApp(badOverride)},
		{"invalid UTF-8 in spec", f.SetApp(badUTF8)},
		{"invalid UTF-8 in credentials", f.SetApp(badCreds)},
		{"commit is a ref", f.SetCommit("web", "main")},
		{"empty commit", f.SetCommit("web", "")},
		{"unknown app", f.SetCommit("nope", sha("2"))},
		{"bad cluster name", f.SetCluster("C1", nil)},
		{"bad cluster label", f.SetCluster("c1", map[string]string{"env": "prod eu"})},
	} {
		if tc.err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if strings.Contains(tc.err.Error(), "s3cret") {
			t.Errorf("%s: error echoes a credential: %v", tc.name, tc.err)
		}
	}
	if closed(ch) {
		t.Fatal("refused input woke the cluster")
	}
	if now, _ := f.Watch("c1"); now != before {
		t.Fatal("refused input changed the snapshot")
	}
	if got := f.Clusters(); len(got) != 1 || got[0].Labels["env"] != "prod" {
		t.Fatalf("clusters = %v", got)
	}
}

// TestFleetKeepsItsOwnCopies changes what the caller may change after
// SetApp and SetCluster (the App, its pins, the labels); the spec and
// credentials are handed over and never changed (see SetApp).
func TestFleetKeepsItsOwnCopies(t *testing.T) {
	f := New(testlog.New(t))
	lbls := map[string]string{"env": "prod", "region": "eu"}
	must(t, f.SetCluster("c1", lbls))
	app := richApp("web")
	app.Pins = map[string]string{}
	must(t, f.SetApp(app))
	want := proto.Clone(f.Assignment("c1"))

	lbls["env"] = "dev"
	app.Spec = changed(app, func(s *droverv1.ApplicationSpec) { s.Placement.Selector = matchLabels("env", "nope") }).Spec
	app.Credentials = &droverv1.RepoCredentials{Password: "changed"}
	app.Pins["c1"] = sha("x")
	app.Commit = sha("y")
	if !proto.Equal(f.Assignment("c1"), want) {
		t.Fatal("changing the caller's App or labels changed the fleet")
	}

	cs := f.Clusters()
	cs[0].Labels["env"] = "changed"
	if got := f.Clusters()[0].Labels["env"]; got != "prod" {
		t.Fatalf("Clusters() shares labels: %s", got)
	}
}

// TestFleetAgreesWithCompute drives the fleet through many random changes
// and after each one checks every cluster's snapshot and placement against
// Compute and Placed from scratch.
func TestFleetAgreesWithCompute(t *testing.T) {
	f := New(testlog.New(t))
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	randLabels := func() map[string]string {
		l := map[string]string{}
		for _, k := range []string{"env", "region", "tier"} {
			if rng.IntN(4) > 0 {
				l[k] = pick("a", "b", "c")
			}
		}
		return l
	}
	randSelector := func() *droverv1.LabelSelector {
		switch rng.IntN(5) {
		case 0:
			return nil
		case 1:
			return &droverv1.LabelSelector{}
		case 2:
			return &droverv1.LabelSelector{MatchExpressions: []*droverv1.LabelSelectorRequirement{
				{Key: pick("env", "region"), Operator: pick("NotIn", "In"), Values: []string{pick("a", "b")}},
			}}
		default:
			return matchLabels(pick("env", "region", "tier"), pick("a", "b", "c"))
		}
	}
	clusterNames := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}
	appNamesAll := []string{"a0", "a1", "a2", "a3", "a4"}
	randApp := func(name string) *App {
		a := simpleApp(name, "", &droverv1.Placement{Selector: randSelector()})
		if rng.IntN(4) > 0 {
			a.Commit = sha(pick("1", "2", "3"))
		}
		if rng.IntN(3) == 0 {
			a.Spec.Placement.ClusterNames = []string{pick(clusterNames...)}
		}
		if rng.IntN(3) == 0 {
			a.Pins = map[string]string{pick(clusterNames...): sha(pick("1", "2"))}
		}
		for range rng.IntN(3) {
			a.Spec.Overrides = append(a.Spec.Overrides, &droverv1.Override{
				Selector:   randSelector(),
				Patches:    []*droverv1.KustomizePatch{{Patch: pick("p", "q")}},
				HelmValues: pick("", "x: 1", "y: 2"),
				Variables:  map[string]string{pick("v", "w"): pick("1", "2")},
			})
		}
		return a
	}

	apps := map[string]*App{}
	clusters := map[string]map[string]string{}
	for step := range 400 {
		var what string
		switch op := rng.IntN(10); {
		case op < 3:
			name, l := pick(clusterNames...), randLabels()
			what = "set cluster " + name
			must(t, f.SetCluster(name, l))
			clusters[name] = l
		case op < 4:
			name := pick(clusterNames...)
			what = "remove cluster " + name
			f.RemoveCluster(name)
			delete(clusters, name)
		case op < 7:
			a := randApp(pick(appNamesAll...))
			what = "set app " + a.Name
			must(t, f.SetApp(a))
			apps[a.Name] = a
		case op < 8:
			name := pick(appNamesAll...)
			what = "remove app " + name
			f.RemoveApp(name)
			delete(apps, name)
		default:
			name, commit := pick(appNamesAll...), sha(pick("1", "2", "3"))
			what = "set commit " + name
			err := f.SetCommit(name, commit)
			if a, ok := apps[name]; ok {
				must(t, err)
				a.Commit = commit
			} else if !errors.Is(err, ErrNotFound) {
				t.Fatalf("SetCommit on unknown app: %v", err)
			}
		}

		all := make([]*App, 0, len(apps))
		for _, a := range apps {
			all = append(all, a)
		}
		for name, l := range clusters {
			want := Compute(Cluster{Name: name, Labels: l}, all)
			got := f.Assignment(name)
			if !proto.Equal(got, want) {
				t.Fatalf("step %d (%s): cluster %s: fleet has %v (%s), Compute says %v (%s)",
					step, what, name, appNames(got), got.GetVersion(), appNames(want), want.GetVersion())
			}
			if v := referenceVersion(t, got); got.GetVersion() != v {
				t.Fatalf("step %d (%s): cluster %s: version %s, content says %s", step, what, name, got.GetVersion(), v)
			}
		}
		for appName, a := range apps {
			var want []string
			for name, l := range clusters {
				if Placed(a.Spec, name, l) {
					want = append(want, name)
				}
			}
			slices.Sort(want)
			if got := f.PlacedClusters(appName); !slices.Equal(got, want) {
				t.Fatalf("step %d (%s): PlacedClusters(%s) = %v, want %v", step, what, appName, got, want)
			}
		}
		if got := len(f.Clusters()); got != len(clusters) {
			t.Fatalf("step %d (%s): %d clusters, want %d", step, what, got, len(clusters))
		}
	}
}

// TestFleetConcurrentWatchers runs watchers against mutators (meant for
// -race) and then checks that every watcher ends on the final snapshot.
func TestFleetConcurrentWatchers(t *testing.T) {
	f := New(slog.New(slog.DiscardHandler))
	const clusters = 20
	for i := range clusters {
		must(t, f.SetCluster(fmt.Sprintf("c%d", i), map[string]string{"env": []string{"prod", "dev"}[i%2]}))
	}
	must(t, f.SetApp(simpleApp("web", sha("0"), everywhere())))

	stop := make(chan struct{})
	var watchers sync.WaitGroup
	seen := make([]atomic.Pointer[string], clusters*2)
	for w := range seen {
		cluster := fmt.Sprintf("c%d", w%clusters)
		watchers.Go(func() {
			for {
				snap, ch := f.Watch(cluster)
				if snap != nil {
					if snap.Assignment.GetVersion() != snap.Version {
						t.Errorf("%s: snapshot version %s, assignment %s", cluster, snap.Version, snap.Assignment.GetVersion())
					}
					// Read the whole snapshot, as a stream marshalling it would.
					if _, err := proto.Marshal(snap.Assignment); err != nil {
						t.Errorf("marshal: %v", err)
					}
					v := snap.Version
					seen[w].Store(&v)
				}
				select {
				case <-ch:
				case <-stop:
					return
				}
			}
		})
	}

	var mutators sync.WaitGroup
	for m := range 4 {
		mutators.Go(func() {
			for i := range 200 {
				switch (i + m) % 5 {
				case 0:
					if err := f.SetCommit("web", sha(fmt.Sprint(m, i))); err != nil {
						t.Error(err)
					}
				case 1:
					name := fmt.Sprintf("c%d", i%clusters)
					if err := f.SetCluster(name, map[string]string{"env": []string{"prod", "dev"}[(i+m)%2]}); err != nil {
						t.Error(err)
					}
				case 2:
					a := simpleApp(fmt.Sprintf("app-%d", m), sha(fmt.Sprint(i)), &droverv1.Placement{Selector: matchLabels("env", "prod")})
					if err := f.SetApp(a); err != nil {
						t.Error(err)
					}
				case 3:
					f.RemoveApp(fmt.Sprintf("app-%d", (m+1)%4))
				case 4:
					_ = f.PlacedClusters("web")
					_ = f.AppsOn(fmt.Sprintf("c%d", i%clusters))
					_ = f.Clusters()
				}
			}
		})
	}
	mutators.Wait()

	// Every watcher must converge on the final version; a lost wake-up
	// would hang here until the test times out.
	for w := range seen {
		want := f.Assignment(fmt.Sprintf("c%d", w%clusters)).GetVersion()
		for {
			if v := seen[w].Load(); v != nil && *v == want {
				break
			}
			runtime.Gosched()
		}
	}
	close(stop)
	watchers.Wait()
}

// TestFleetPreview: a preview shows the commit the cluster is held on by a
// rollout, or the one asked for, and changes nothing the clusters get.
func TestFleetPreview(t *testing.T) {
	f := New(testlog.New(t))
	app := simpleApp("web", sha("2"), &droverv1.Placement{Selector: matchLabels("env", "prod")})
	app.Pins = map[string]string{"c1": sha("1")}
	must(t, f.SetApp(app))
	must(t, f.SetCluster("c1", map[string]string{"env": "prod"}))
	must(t, f.SetCluster("c2", map[string]string{"env": "prod"}))
	must(t, f.SetCluster("dev", map[string]string{"env": "dev"}))
	before := f.Assignment("c1").GetVersion()

	for _, tc := range []struct{ cluster, commit, want string }{
		{"c1", "", sha("1")},
		{"c2", "", sha("2")},
		{"c1", sha("3"), sha("3")},
	} {
		aa, err := f.Preview("web", tc.cluster, tc.commit)
		if err != nil || aa.GetCommit() != tc.want || aa.GetVariables()["cluster.name"] != tc.cluster {
			t.Errorf("Preview(web, %s, %q) = %v, %v; want commit %s", tc.cluster, tc.commit, aa, err, tc.want)
		}
	}
	if got := f.Assignment("c1").GetVersion(); got != before {
		t.Errorf("a preview changed c1's assignment version from %s to %s", before, got)
	}
	for _, tc := range []struct {
		app, cluster string
		want         error
	}{
		{"web", "dev", ErrNotPlaced},
		{"nope", "c1", ErrNotFound},
		{"web", "nope", ErrNotFound},
	} {
		if _, err := f.Preview(tc.app, tc.cluster, ""); !errors.Is(err, tc.want) {
			t.Errorf("Preview(%s, %s) error = %v, want %v", tc.app, tc.cluster, err, tc.want)
		}
	}
}
