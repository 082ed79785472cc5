package dashboard_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/dashboard"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { testbed.Main(m) }

// t0 is the dashboard's clock in these tests; the seeded data is dated
// relative to it, so relative times render the same on every run.
var t0 = time.Date(2030, 1, 2, 12, 0, 0, 0, time.UTC)

const (
	commitWeb1 = "1111111111111111111111111111111111111111"
	commitWeb2 = "2222222222222222222222222222222222222222"
	commitAPI  = "3333333333333333333333333333333333333333"
	commitNew  = "4444444444444444444444444444444444444444"
)

// fakeHub stands in for the live side of the hub (its control logic and
// in-memory fleet, its agent streams); the store under the admin API is
// the test bed's real PostgreSQL.
type fakeHub struct {
	placed   map[string][]string
	versions map[string]string
	refresh  chan string

	mu sync.Mutex // guards the fields below
	// rollouts are what Rollout reports; none means ErrNotFound.
	rollouts map[string]*droverv1.RolloutStatus
	// controls records ControlRollout calls as "app op actor".
	controls []string
	// members are the replicas the gossip shows.
	members []string
}

func (h *fakeHub) ApplicationStored(context.Context, *droverv1.Application) {}
func (h *fakeHub) ApplicationDeleted(context.Context, string)               {}
func (h *fakeHub) ClusterChanged(context.Context, string)                   {}
func (h *fakeHub) RepositoryChanged(context.Context, string)                {}
func (h *fakeHub) Refresh(_ context.Context, app string) (string, bool, error) {
	h.refresh <- app
	return commitNew, true, nil
}
func (h *fakeHub) Disconnect(string, error)                {}
func (h *fakeHub) PlacedClusters(app string) []string      { return h.placed[app] }
func (h *fakeHub) AssignmentVersion(cluster string) string { return h.versions[cluster] }
func (h *fakeHub) SourceError(app string) string           { return "" }
func (h *fakeHub) Replica() string                         { return "hub-0" }
func (h *fakeHub) Preview(app, cluster, commit string) (*droverv1.AppAssignment, error) {
	return nil, fleet.ErrNotFound
}
func (h *fakeHub) Members() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.members
}
func (h *fakeHub) Status(context.Context) *droverv1.HubStatus {
	return &droverv1.HubStatus{State: "ok"}
}

type fixture struct {
	srv         *httptest.Server
	dash        *dashboard.Dashboard
	hub         *fakeHub
	admin       string // an admin API token
	viewer      string // a viewer API token
	store       *store.Store
	databaseURL string
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func app(name, repo, path string, sel map[string]string) *droverv1.Application {
	return &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: repo, Ref: "main", Path: path},
		Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: sel}},
	}}
}

// newFixture seeds a small fleet: eu-1 online with a healthy and a
// degraded application, us-1 offline and progressing, dev-1 never
// connected.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dbURL := testbed.Postgres(t)
	st, err := store.Open(ctx, dbURL, testlog.New(t))
	must(t, err)
	t.Cleanup(st.Close)

	register := func(name string, labels map[string]string) {
		tok, _, err := st.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Labels: labels}, "test", t0.Add(-48*time.Hour))
		must(t, err)
		_, err = st.CreateClusterWithJoinToken(ctx, tok, name, "serial-"+name, t0.Add(-47*time.Hour))
		must(t, err)
	}
	register("eu-1", map[string]string{"env": "prod", "region": "eu"})
	register("us-1", map[string]string{"env": "prod", "region": "us"})
	register("dev-1", map[string]string{"env": "dev"})
	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "0.1.0"}
	must(t, st.MarkConnected(ctx, "eu-1", "hub-a", "10.0.0.1:5000", facts, t0.Add(-2*time.Hour)))
	must(t, st.TouchLastSeen(ctx, []string{"eu-1"}, t0.Add(-20*time.Second)))
	must(t, st.RecordAck(ctx, "eu-1", "v-eu-1", "", t0.Add(-time.Hour)))
	must(t, st.MarkConnected(ctx, "us-1", "hub-b", "10.0.0.2:5000", facts, t0.Add(-5*time.Hour)))
	must(t, st.TouchLastSeen(ctx, []string{"us-1"}, t0.Add(-3*time.Hour)))
	must(t, st.RecordAck(ctx, "us-1", "v-us-1-old", "", t0.Add(-4*time.Hour)))
	must(t, st.RecordAck(ctx, "us-1", "", "render web: kustomization.yaml: <b>bad</b>", t0.Add(-4*time.Hour)))

	_, err = st.CreateApplication(ctx, app("web", "https://github.com/acme/fleet.git", "web", map[string]string{"env": "prod"}), "alice")
	must(t, err)
	_, err = st.CreateApplication(ctx, app("api", "https://git.example.com/acme/api.git", "api", map[string]string{"region": "eu"}), "alice")
	must(t, err)
	_, err = st.AddRelease(ctx, "web", commitWeb1, "main", "", t0.Add(-5*time.Hour))
	must(t, err)
	_, err = st.AddRelease(ctx, "web", commitWeb2, "main", "", t0.Add(-time.Hour))
	must(t, err)
	_, err = st.AddRelease(ctx, "api", commitAPI, "main", "", t0.Add(-6*time.Hour))
	must(t, err)

	obs := timestamppb.New(t0.Add(-30 * time.Second))
	must(t, st.WriteStatuses(ctx, []*droverv1.ApplicationStatus{
		{Cluster: "eu-1", Application: "web", Commit: commitWeb2, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY, ObservedAt: obs,
			Resources: []*droverv1.ResourceStatus{
				{Kind: "Deployment", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY},
				{Kind: "Service", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY},
			}},
		{Cluster: "eu-1", Application: "api", Commit: commitAPI, Sync: droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC, Health: droverv1.Health_HEALTH_DEGRADED, ObservedAt: obs,
			Message: `<script>alert("pwned")</script> Deployment api: 0/2 ready`,
			Resources: []*droverv1.ResourceStatus{
				{Kind: "Deployment", Namespace: "api", Name: "api", Health: droverv1.Health_HEALTH_DEGRADED, Message: "0/2 replicas ready", Drifted: true},
			}},
		{Cluster: "us-1", Application: "web", Commit: commitWeb1, Sync: droverv1.SyncState_SYNC_STATE_APPLYING, Health: droverv1.Health_HEALTH_PROGRESSING,
			ObservedAt: timestamppb.New(t0.Add(-3 * time.Hour))},
		// api left us-1 (its labels changed) and its agent, offline, has
		// not confirmed the prune: shown as being removed, counted nowhere
		// (the overview's us-1 tile is not Degraded).
		{Cluster: "us-1", Application: "api", Commit: commitAPI, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_DEGRADED,
			ObservedAt: timestamppb.New(t0.Add(-4 * time.Hour))},
	}))
	_, err = st.MarkRemoving(ctx, map[string][]string{"us-1": {"web"}})
	must(t, err)
	must(t, st.AddEvent(ctx, &droverv1.Event{Time: timestamppb.New(t0.Add(-10 * time.Minute)), Kind: "application.source_failed", Actor: "hub", Application: "web",
		Message: `fetch <img src=x onerror=alert(1)>: not found`}))
	must(t, st.AddEvent(ctx, &droverv1.Event{Time: timestamppb.New(t0.Add(-5 * time.Minute)), Kind: "cluster.labels_changed", Actor: "alice", Cluster: "eu-1", Message: "labels region=eu"}))

	// Events the store dates itself (registrations, application.created)
	// carry the database's clock: move them before t0.
	conn, err := pgx.Connect(ctx, dbURL)
	must(t, err)
	_, err = conn.Exec(ctx, `UPDATE events SET time = $1 WHERE time < $2`, t0.Add(-30*time.Minute), t0.Add(-24*time.Hour))
	must(t, err)
	must(t, conn.Close(ctx))

	admin, _, err := st.CreateAPIToken(ctx, "alice", adminapi.RoleAdmin, 0, time.Now())
	must(t, err)
	viewer, _, err := st.CreateAPIToken(ctx, "victor", adminapi.RoleViewer, 0, time.Now())
	must(t, err)

	hub := &fakeHub{
		placed:   map[string][]string{"web": {"eu-1", "us-1"}, "api": {"eu-1"}},
		versions: map[string]string{"eu-1": "v-eu-1", "us-1": "v-us-1-new"},
		refresh:  make(chan string, 1),
	}
	api := adminapi.New(st, hub, hub, nil, 90*time.Second, testlog.New(t))
	dash, err := dashboard.New(dashboard.Config{Admin: api, Store: st, Logger: testlog.New(t), Now: func() time.Time { return t0 }})
	must(t, err)
	srv := httptest.NewServer(dash)
	t.Cleanup(srv.Close)
	t.Cleanup(dash.Close)
	return &fixture{srv: srv, dash: dash, hub: hub, admin: admin, viewer: viewer, store: st, databaseURL: dbURL}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so tests see them.
type browser struct {
	t      *testing.T
	base   string
	client *http.Client
}

func (f *fixture) browser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	must(t, err)
	return &browser{t: t, base: f.srv.URL, client: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values) (int, http.Header, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.base+path, body)
	must(b.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.client.Do(req)
	must(b.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	must(b.t, err)
	return resp.StatusCode, resp.Header, string(raw)
}

func (b *browser) get(path string) (int, string) {
	b.t.Helper()
	code, _, body := b.do("GET", path, nil)
	return code, body
}

// login signs in through the form and returns the page's CSRF token.
func (b *browser) login(token string) string {
	b.t.Helper()
	code, body := b.get("/login")
	if code != http.StatusOK {
		b.t.Fatalf("GET /login = %d", code)
	}
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatal("login form has no CSRF field")
	}
	code, hdr, body := b.do("POST", "/login", url.Values{"token": {token}, "csrf": {m[1]}, "next": {"/"}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/" {
		b.t.Fatalf("POST /login = %d %q: %s", code, hdr.Get("Location"), body)
	}
	_, body = b.get("/")
	m = csrfRE.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatal("signed-in page has no CSRF field")
	}
	return m[1]
}

var (
	normCSRF  = regexp.MustCompile(`name="csrf" value="[^"]+"`)
	normAsset = regexp.MustCompile(`\?v=[0-9a-f]{12}`)
)

func golden(t *testing.T, name, got string) {
	t.Helper()
	got = normCSRF.ReplaceAllString(got, `name="csrf" value="CSRF"`)
	got = normAsset.ReplaceAllString(got, "?v=ASSETS")
	path := filepath.Join("testdata", name+".golden")
	if *update {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (run go test -update after checking the change):\n%s", name, path, diff(string(want), got))
	}
}

// diff shows the first differing line of want and got.
func diff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(wl), len(gl)); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\nwant: %s\ngot:  %s", i+1, w, g)
		}
	}
	return "(equal lines; trailing difference)"
}

func TestPages(t *testing.T) {
	f := newFixture(t)
	b := f.browser(t)
	b.login(f.admin)
	for _, tc := range []struct {
		name, path string
		code       int
		contains   []string
	}{
		{"overview", "/?fragment=1", 200, []string{"✕ Degraded", "○ Offline", `href="/clusters/eu-1"`}},
		{"overview-page", "/", 200, []string{"<!doctype html>", `data-live="/live"`, "alice · admin"}},
		{"overview-grouped", "/?group=region&fragment=1", 200, []string{"region=eu", "no region label"}},
		{"overview-selector", "/?selector=env%3Dprod&fragment=1", 200, []string{"2 of 3 clusters"}},
		{"overview-search", "/?q=dev&fragment=1", 200, []string{"1 of 3 clusters"}},
		{"overview-bad-selector", "/?selector=env+in+(%3Cscript%3E&fragment=1", 400, []string{`label selector &#34;env in (&lt;script&gt;&#34;`}},
		{"cluster", "/clusters/eu-1?fragment=1", 200, []string{"Kubernetes v1.37.2", "✓ Acknowledged", "≠ 1 drifted", "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;"}},
		{"cluster-offline", "/clusters/us-1?fragment=1", 200, []string{"○ Offline", "Not yet acknowledged", "✕ Rejected", "&lt;b&gt;bad&lt;/b&gt;", "Removing", "waiting for the agent to confirm the prune"}},
		{"cluster-new", "/clusters/dev-1?fragment=1", 200, []string{"No application reports"}},
		{"apps", "/apps?fragment=1", 200, []string{`href="https://github.com/acme/fleet/commit/` + commitWeb2 + `"`}},
		{"app", "/apps/web?fragment=1", 200, []string{"Rollout: all at once (no strategy)", "Refresh source now", "! behind"}},
		{"app-filtered", "/apps/web?selector=region%3Dus&fragment=1", 200, []string{"1 matching the filter"}},
		{"app-bad-selector", "/apps/web?selector=%3D%3D&fragment=1", 400, []string{"label selector"}},
		{"app-unknown-forge", "/apps/api?fragment=1", 200, []string{"<code>3333333333</code>"}},
		{"events", "/events?fragment=1", 200, []string{"&lt;img src=x onerror=alert(1)&gt;", `href="/apps/web"`}},
		{"events-filtered", "/events?cluster=eu-1&kind=cluster.&fragment=1", 200, []string{"labels region=eu"}},
		{"events-none", "/events?app=nope&fragment=1", 200, []string{"No event matches this filter"}},
		{"events-bad-token", "/events?before=xyz&fragment=1", 400, []string{"page_token"}},
		{"cluster-unknown", "/clusters/nope?fragment=1", 404, []string{"does not exist"}},
		{"cluster-escaped-name", "/clusters/%3Cscript%3E?fragment=1", 404, []string{"&lt;script&gt;"}},
		{"app-unknown", "/apps/nope", 404, []string{"<!doctype html>", "Not found"}},
		{"path-unknown", "/nope/deeper?fragment=1", 404, []string{"does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b.t = t
			code, body := b.get(tc.path)
			if code != tc.code {
				t.Errorf("GET %s = %d, want %d", tc.path, code, tc.code)
			}
			for _, s := range tc.contains {
				if !strings.Contains(body, s) {
					t.Errorf("GET %s: missing %q", tc.path, s)
				}
			}
			for _, bad := range []string{"<script>alert", "<img src=x", "<b>bad"} {
				if strings.Contains(body, bad) {
					t.Errorf("GET %s: unescaped %q", tc.path, bad)
				}
			}
			golden(t, tc.name, body)
		})
	}
}

func TestEmptyFleet(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testbed.Postgres(t), testlog.New(t))
	must(t, err)
	t.Cleanup(st.Close)
	tok, _, err := st.CreateAPIToken(ctx, "alice", adminapi.RoleAdmin, 0, time.Now())
	must(t, err)
	dash, err := dashboard.New(dashboard.Config{Admin: adminapi.New(st, &fakeHub{}, &fakeHub{}, nil, time.Minute, testlog.New(t)), Store: st, Now: func() time.Time { return t0 }})
	must(t, err)
	srv := httptest.NewServer(dash)
	t.Cleanup(srv.Close)
	f := &fixture{srv: srv}
	b := f.browser(t)
	b.login(tok)
	for _, tc := range []struct{ path, want string }{
		{"/?fragment=1", "No clusters yet — create a join token with <code>droverctl token create</code>"},
		{"/apps?fragment=1", "No applications yet"},
		{"/events?fragment=1", "No events yet"},
	} {
		code, body := b.get(tc.path)
		if code != 200 || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d, want 200 with %q:\n%s", tc.path, code, tc.want, body)
		}
	}
}

func TestAccess(t *testing.T) {
	f := newFixture(t)

	t.Run("no session", func(t *testing.T) {
		b := f.browser(t)
		for _, tc := range []struct {
			method, path string
			code         int
			location     string
		}{
			{"GET", "/", 303, "/login?next=%2F"},
			{"GET", "/clusters/eu-1?x=1", 303, "/login?next=%2Fclusters%2Feu-1%3Fx%3D1"},
			{"GET", "/?fragment=1", 401, ""},
			{"GET", "/live", 401, ""},
			{"POST", "/apps/web/refresh", 401, ""},
			{"POST", "/logout", 401, ""},
		} {
			code, hdr, _ := b.do(tc.method, tc.path, url.Values{})
			if code != tc.code || hdr.Get("Location") != tc.location {
				t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, code, hdr.Get("Location"), tc.code, tc.location)
			}
		}
		// Assets are public: the login page needs them.
		if code, _ := b.get("/static/app.css"); code != 200 {
			t.Errorf("GET /static/app.css = %d", code)
		}
	})

	t.Run("login refusals", func(t *testing.T) {
		b := f.browser(t)
		_, body := b.get("/login")
		nonce := csrfRE.FindStringSubmatch(body)[1]
		for _, tc := range []struct {
			name string
			form url.Values
			code int
			want string
		}{
			{"unknown token", url.Values{"token": {"abcdefgh.ijklmnopqrstuvwxyzabcdefghijklmn"}, "csrf": {nonce}}, 401, "was not accepted"},
			{"garbage token", url.Values{"token": {"<script>"}, "csrf": {nonce}}, 401, "was not accepted"},
			{"empty token", url.Values{"token": {""}, "csrf": {nonce}}, 401, "Paste an API token"},
			{"no form nonce", url.Values{"token": {f.admin}}, 403, "expired"},
			{"wrong form nonce", url.Values{"token": {f.admin}, "csrf": {"forged"}}, 403, "expired"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// Each attempt starts from a fresh form (its nonce cookie).
				b.t = t
				_, body := b.get("/login")
				if tc.form.Get("csrf") == nonce {
					tc.form.Set("csrf", csrfRE.FindStringSubmatch(body)[1])
				}
				code, _, body := b.do("POST", "/login", tc.form)
				if code != tc.code || !strings.Contains(body, tc.want) {
					t.Errorf("POST /login = %d, want %d with %q", code, tc.code, tc.want)
				}
				if strings.Contains(body, f.admin) {
					t.Error("the page repeats the token")
				}
				if c, _ := b.get("/?fragment=1"); c != 401 {
					t.Errorf("signed in after a refused login: %d", c)
				}
			})
		}
	})

	t.Run("session cookie", func(t *testing.T) {
		b := f.browser(t)
		_, body := b.get("/login?next=//evil.example/x")
		nonce := csrfRE.FindStringSubmatch(body)[1]
		code, hdr, _ := b.do("POST", "/login", url.Values{"token": {f.viewer}, "csrf": {nonce}, "next": {"//evil.example/x"}})
		if code != 303 || hdr.Get("Location") != "/" {
			t.Errorf("login with an off-site next = %d %q, want 303 /", code, hdr.Get("Location"))
		}
		// Forms a browser turns into another site: it drops tabs and
		// newlines and reads a backslash as a slash.
		for _, next := range []string{"/\t/evil.example/x", "/\n/evil.example", "/\\evil.example", "\\/evil.example", "https://evil.example/", "/\r\n/evil.example"} {
			b := f.browser(t)
			_, body := b.get("/login?next=" + url.QueryEscape(next))
			nonce := csrfRE.FindStringSubmatch(body)[1]
			code, hdr, _ := b.do("POST", "/login", url.Values{"token": {f.viewer}, "csrf": {nonce}, "next": {next}})
			if code != 303 || hdr.Get("Location") != "/" {
				t.Errorf("login with next %q = %d %q, want 303 /", next, code, hdr.Get("Location"))
			}
		}
		for _, next := range []string{"/clusters/eu-1?x=1", "/applications/web#res"} {
			b := f.browser(t)
			_, body := b.get("/login?next=" + url.QueryEscape(next))
			nonce := csrfRE.FindStringSubmatch(body)[1]
			if code, hdr, _ := b.do("POST", "/login", url.Values{"token": {f.viewer}, "csrf": {nonce}, "next": {next}}); code != 303 || hdr.Get("Location") != next {
				t.Errorf("login with next %q = %d %q, want 303 to it", next, code, hdr.Get("Location"))
			}
		}
		var sess *http.Cookie
		for _, c := range (&http.Response{Header: hdr}).Cookies() {
			if c.Name == "drover_session" {
				sess = c
			}
		}
		if sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || sess.Path != "/" {
			t.Fatalf("session cookie = %+v, want HttpOnly, SameSite=Strict, Path=/", sess)
		}
		if strings.Contains(sess.Value, f.viewer) || strings.Contains(f.viewer, sess.Value) {
			t.Fatal("the session cookie carries the API token")
		}
	})

	t.Run("actions", func(t *testing.T) {
		admin, viewer := f.browser(t), f.browser(t)
		adminCSRF, viewerCSRF := admin.login(f.admin), viewer.login(f.viewer)
		if _, body := viewer.get("/apps/web?fragment=1"); strings.Contains(body, "Refresh source now") {
			t.Error("a viewer is shown the refresh button")
		}
		for _, tc := range []struct {
			name string
			b    *browser
			form url.Values
			code int
		}{
			{"viewer with CSRF", viewer, url.Values{"csrf": {viewerCSRF}}, 403},
			{"admin without CSRF", admin, url.Values{}, 403},
			{"admin with a forged CSRF", admin, url.Values{"csrf": {"forged"}}, 403},
			{"admin with the viewer's CSRF", admin, url.Values{"csrf": {viewerCSRF}}, 403},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc.b.t = t
				code, _, _ := tc.b.do("POST", "/apps/web/refresh", tc.form)
				if code != tc.code {
					t.Errorf("POST /apps/web/refresh = %d, want %d", code, tc.code)
				}
				select {
				case app := <-f.hub.refresh:
					t.Errorf("refresh of %s ran", app)
				default:
				}
			})
		}
		admin.t = t
		code, hdr, _ := admin.do("POST", "/apps/web/refresh", url.Values{"csrf": {adminCSRF}})
		if code != 303 || hdr.Get("Location") != "/apps/web?refreshed="+commitNew {
			t.Fatalf("admin refresh = %d %q", code, hdr.Get("Location"))
		}
		if app := <-f.hub.refresh; app != "web" {
			t.Fatalf("refreshed %s, want web", app)
		}
		evs, _, err := f.store.ListEvents(context.Background(), store.EventFilter{KindPrefix: "application.refreshed"}, 1, "")
		must(t, err)
		if len(evs) != 1 || evs[0].GetActor() != "alice" {
			t.Fatalf("audit events = %v, want one by alice", evs)
		}
		if code, _, _ := admin.do("POST", "/apps/nope/refresh", url.Values{"csrf": {adminCSRF}}); code != 404 {
			t.Errorf("refresh of an unknown application = %d, want 404", code)
		}

		// Signing out ends the session on the server, not only the cookie.
		cookies := admin.client.Jar.Cookies(mustURL(t, admin.base))
		code, hdr, _ = admin.do("POST", "/logout", url.Values{"csrf": {adminCSRF}})
		if code != 303 || hdr.Get("Location") != "/login" {
			t.Fatalf("logout = %d %q", code, hdr.Get("Location"))
		}
		replay := f.browser(t)
		replay.client.Jar.SetCookies(mustURL(t, admin.base), cookies)
		if code, _ := replay.get("/?fragment=1"); code != 401 {
			t.Errorf("old session after logout: %d, want 401", code)
		}
	})
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	must(t, err)
	return u
}

// TestLiveStream checks that a change reported to the dashboard reaches an
// open page's event stream.
func TestLiveStream(t *testing.T) {
	f := newFixture(t)
	b := f.browser(t)
	b.login(f.viewer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/live", nil)
	must(t, err)
	resp, err := b.client.Do(req)
	must(t, err)
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET /live = %d %s", resp.StatusCode, ct)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The stream is subscribed once its first bytes arrive.
	for l := range lines {
		if l == ": live" {
			break
		}
	}
	for range 5 {
		f.dash.Notify() // coalesced into one tick
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			if l == "event: change" {
				f.dash.Close()
				for range lines {
				}
				return // and Close ended the stream
			}
		case <-timeout:
			t.Fatal("no change event within 30s")
		}
	}
}
