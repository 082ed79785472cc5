package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func testApp(name, ref string) *droverv1.Application {
	return &droverv1.Application{
		Name: name,
		Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://git.example.com/apps.git", Ref: ref, Path: "apps/" + name},
			Render: &droverv1.Render{Type: "kustomize", Namespace: name},
			Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{
				MatchLabels: map[string]string{"env": "prod"},
				MatchExpressions: []*droverv1.LabelSelectorRequirement{
					{Key: "region", Operator: "In", Values: []string{"eu", "us"}},
				},
			}},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, Interval: "5m"},
			Overrides: []*droverv1.Override{{
				Selector:  &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}},
				Variables: map[string]string{"replicas": "3"},
			}},
		},
	}
}

func TestApplications(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	app := testApp("web", "main")
	created, err := s.CreateApplication(ctx, app, "alice")
	if err != nil {
		t.Fatalf("CreateApplication: %v", err)
	}
	if created.GetGeneration() != 1 || !proto.Equal(created.GetSpec(), app.GetSpec()) || created.GetCreatedAt() == nil {
		t.Errorf("created = %v", created)
	}
	if _, err := s.CreateApplication(ctx, app, "alice"); !errors.Is(err, ErrConflict) {
		t.Errorf("duplicate CreateApplication: %v, want ErrConflict", err)
	}
	got, err := s.GetApplication(ctx, "web")
	if err != nil || !proto.Equal(got, created) {
		t.Errorf("GetApplication = %v, %v; want %v", got, err, created)
	}

	// An equal spec is no change.
	same, err := s.UpdateApplication(ctx, testApp("web", "main"), "bob")
	if err != nil || same.GetGeneration() != 1 {
		t.Errorf("UpdateApplication with the same spec = generation %d, %v; want 1", same.GetGeneration(), err)
	}
	updated, err := s.UpdateApplication(ctx, testApp("web", "v2"), "bob")
	if err != nil {
		t.Fatalf("UpdateApplication: %v", err)
	}
	if updated.GetGeneration() != 2 || updated.GetSpec().GetSource().GetRef() != "v2" {
		t.Errorf("updated = %v", updated)
	}
	if _, err := s.UpdateApplication(ctx, testApp("nope", "main"), "bob"); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateApplication(nope): %v, want ErrNotFound", err)
	}
	if _, err := s.GetApplication(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetApplication(nope): %v, want ErrNotFound", err)
	}

	if _, err := s.CreateApplication(ctx, testApp("api", "main"), "alice"); err != nil {
		t.Fatalf("CreateApplication(api): %v", err)
	}
	list, err := s.ListApplications(ctx)
	if err != nil || len(list) != 2 || list[0].GetName() != "api" || list[1].GetName() != "web" {
		t.Errorf("ListApplications = %v, %v", list, err)
	}

	// Deleting takes releases and statuses along.
	registerClusters(t, s, nil, "c1")
	if _, err := s.AddRelease(ctx, "web", strings.Repeat("a", 40), "main", "", testNow); err != nil {
		t.Fatalf("AddRelease: %v", err)
	}
	if err := s.WriteStatuses(ctx, []*droverv1.ApplicationStatus{{Cluster: "c1", Application: "web"}, {Cluster: "c1", Application: "api"}}); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}
	if err := s.DeleteApplication(ctx, "web", "carol"); err != nil {
		t.Fatalf("DeleteApplication: %v", err)
	}
	if err := s.DeleteApplication(ctx, "web", "carol"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteApplication: %v, want ErrNotFound", err)
	}
	if rs, err := s.ListReleases(ctx, "web", 0); err != nil || len(rs) != 0 {
		t.Errorf("releases after delete = %v, %v", rs, err)
	}
	if sts, err := s.GetStatuses(ctx, "c1"); err != nil || len(sts) != 1 || sts[0].GetApplication() != "api" {
		t.Errorf("statuses after delete = %v, %v; want api's only", sts, err)
	}

	// Every change was audited, in order.
	evs, _, err := s.ListEvents(ctx, EventFilter{Application: "web"}, 0, "")
	if err != nil {
		t.Fatalf("ListEvents: %v", err)
	}
	var kinds, actors []string
	for _, ev := range evs {
		kinds = append(kinds, ev.GetKind())
		actors = append(actors, ev.GetActor())
	}
	if got, want := strings.Join(kinds, " "), "application.deleted application.updated application.created"; got != want {
		t.Errorf("event kinds = %s, want %s", got, want)
	}
	if got, want := strings.Join(actors, " "), "carol bob alice"; got != want {
		t.Errorf("event actors = %s, want %s", got, want)
	}
}

func TestApplicationValidation(t *testing.T) {
	s := newStore(t)
	tests := []struct {
		name  string
		app   *droverv1.Application
		field string
	}{
		{"nil", nil, "application"},
		{"no name", &droverv1.Application{Spec: &droverv1.ApplicationSpec{}}, "application.name"},
		{"bad name", &droverv1.Application{Name: "Web App", Spec: &droverv1.ApplicationSpec{}}, "application.name"},
		{"long name", &droverv1.Application{Name: strings.Repeat("a", 64), Spec: &droverv1.ApplicationSpec{}}, "application.name"},
		{"no spec", &droverv1.Application{Name: "web"}, "application.spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for op, call := range map[string]func() error{
				"create": func() error { _, err := s.CreateApplication(context.Background(), tt.app, "a"); return err },
				"update": func() error { _, err := s.UpdateApplication(context.Background(), tt.app, "a"); return err },
			} {
				var ve *ValidationError
				if err := call(); !errors.As(err, &ve) || ve.Field != tt.field {
					t.Errorf("%s: err = %v, want a *ValidationError for %s", op, err, tt.field)
				}
			}
		})
	}
}

func TestReleases(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for _, name := range []string{"web", "api", "idle"} {
		if _, err := s.CreateApplication(ctx, testApp(name, "main"), "alice"); err != nil {
			t.Fatalf("CreateApplication: %v", err)
		}
	}
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	c := strings.Repeat("c", 40)
	steps := []struct {
		app, commit string
		content     string // "" is the commit's own
		at          time.Duration
		wantCreated bool
	}{
		{"web", a, "", 0, true},
		{"web", a, "", time.Minute, false}, // idempotent
		{"web", b, a, 2 * time.Minute, true},
		{"web", b, a, 3 * time.Minute, false},
		{"web", a, a, 4 * time.Minute, true}, // back to a: current again
		{"api", c, "", 0, true},
	}
	for i, st := range steps {
		created, err := s.AddRelease(ctx, st.app, st.commit, "main", st.content, testNow.Add(st.at))
		if err != nil {
			t.Fatalf("step %d: AddRelease: %v", i, err)
		}
		if created != st.wantCreated {
			t.Errorf("step %d: created = %v, want %v", i, created, st.wantCreated)
		}
	}
	rs, err := s.ListReleases(ctx, "web", 0)
	if err != nil {
		t.Fatalf("ListReleases: %v", err)
	}
	if len(rs) != 2 || rs[0].GetCommit() != a || rs[1].GetCommit() != b || !rs[1].GetNoop() || rs[0].GetNoop() ||
		rs[1].GetContentCommit() != a || rs[0].GetContentCommit() != a ||
		!rs[0].GetCreatedAt().AsTime().Equal(testNow.Add(4*time.Minute)) {
		t.Errorf("web releases = %v", rs)
	}
	if rs, err := s.ListReleases(ctx, "web", 1); err != nil || len(rs) != 1 || rs[0].GetCommit() != a {
		t.Errorf("ListReleases(limit 1) = %v, %v", rs, err)
	}
	cur, err := s.CurrentReleases(ctx)
	if err != nil {
		t.Fatalf("CurrentReleases: %v", err)
	}
	if len(cur) != 2 || cur["web"].GetCommit() != a || cur["api"].GetCommit() != c || cur["api"].GetContentCommit() != c || cur["idle"] != nil {
		t.Errorf("CurrentReleases = %v", cur)
	}

	if _, err := s.AddRelease(ctx, "nope", a, "main", "", testNow); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddRelease(unknown app): %v, want ErrNotFound", err)
	}
	// A SHA-256 object name is refused as every agent refuses it
	// (gitremote.CheckCommit): a release the fleet would NACK is never made.
	for _, bad := range []string{"", "main", strings.Repeat("a", 39), strings.Repeat("A", 40), strings.Repeat("g", 40), strings.Repeat("c", 64), strings.Repeat("0", 40)} {
		var ve *ValidationError
		if _, err := s.AddRelease(ctx, "web", bad, "main", "", testNow); !errors.As(err, &ve) || ve.Field != "commit" {
			t.Errorf("AddRelease(commit %q): %v, want a *ValidationError for commit", bad, err)
		}
		if bad == "" {
			continue // the commit's own
		}
		if _, err := s.AddRelease(ctx, "web", c, "main", bad, testNow); !errors.As(err, &ve) || ve.Field != "content" {
			t.Errorf("AddRelease(content %q): %v, want a *ValidationError for content", bad, err)
		}
	}
	if rs, err := s.ListReleases(ctx, "web", 1); err != nil || rs[0].GetCommit() != a {
		t.Errorf("a refused release changed the current one: %v, %v", rs, err)
	}
}

// TestReleaseContentAfterNewPaths checks that a release's content commit
// holds only for the paths it was found under: when the application reads
// other paths, its clusters get the release's own commit again.
func TestReleaseContentAfterNewPaths(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	app := testApp("web", "main")
	if _, err := s.CreateApplication(ctx, app, "alice"); err != nil {
		t.Fatalf("CreateApplication: %v", err)
	}
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	for _, r := range [][2]string{{a, ""}, {b, a}} {
		if _, err := s.AddRelease(ctx, "web", r[0], "main", r[1], testNow); err != nil {
			t.Fatalf("AddRelease: %v", err)
		}
	}
	content := func() string {
		t.Helper()
		rs, err := s.ListReleases(ctx, "web", 1)
		if err != nil || len(rs) != 1 || rs[0].GetCommit() != b {
			t.Fatalf("ListReleases = %v, %v", rs, err)
		}
		if rs[0].GetNoop() != (rs[0].GetContentCommit() != b) {
			t.Errorf("noop %v with content %s of %s", rs[0].GetNoop(), rs[0].GetContentCommit(), b)
		}
		return rs[0].GetContentCommit()
	}

	app = proto.Clone(app).(*droverv1.Application)
	app.Spec.Source.PollInterval = "5m" // not a path
	if _, err := s.UpdateApplication(ctx, app, "alice"); err != nil {
		t.Fatalf("UpdateApplication: %v", err)
	}
	if got := content(); got != a {
		t.Errorf("content after a change of poll interval = %s, want %s", got, a)
	}
	app.Spec.Source.ExtraPaths = []string{"bases/web"}
	if _, err := s.UpdateApplication(ctx, app, "alice"); err != nil {
		t.Fatalf("UpdateApplication: %v", err)
	}
	if got := content(); got != b {
		t.Errorf("content after extraPaths changed = %s, want the release's own %s", got, b)
	}
}
