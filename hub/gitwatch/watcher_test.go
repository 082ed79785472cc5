package gitwatch

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
)

// source is a Source over a fixed list the test edits; the hub's is the
// store.
type source struct {
	mu      sync.Mutex // guards the fields below
	targets []Target
	creds   map[string]Access
}

func (s *source) Targets() []Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Target(nil), s.targets...)
}

func (s *source) Credentials(_ context.Context, repoURL string) (Access, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creds[repoURL], nil
}

func (s *source) set(targets ...Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = targets
}

// sink records the latest report per application.
type sink struct {
	mu       sync.Mutex // guards the fields below
	commits  map[string]string
	errs     map[string]error
	resolved map[string]int // OnResolved calls per app
	// onResolved, if set, runs inside OnResolved.
	onResolved func(app string)
}

func newSink() *sink {
	return &sink{commits: map[string]string{}, errs: map[string]error{}, resolved: map[string]int{}}
}

func (s *sink) OnResolved(_ context.Context, app, _, commit string) {
	s.mu.Lock()
	s.commits[app] = commit
	delete(s.errs, app)
	s.resolved[app]++
	hook := s.onResolved
	s.mu.Unlock()
	if hook != nil {
		hook(app)
	}
}

func (s *sink) OnError(_ context.Context, app string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.commits, app)
	s.errs[app] = err
}

func (s *sink) commit(app string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits[app]
}

func (s *sink) err(app string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs[app]
}

// eventually fails t unless cond holds within a generous deadline; it
// asserts an outcome, not how fast it came.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startWatcher runs w until the test ends and checks that Run stops.
func startWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after its context was cancelled")
		}
	})
}

func newWatcher(t *testing.T, cfg Config, src Source, snk Sink) *Watcher {
	t.Helper()
	cfg.Logger = testlog.New(t)
	cfg.MinInterval = 100 * time.Millisecond
	w, err := NewWatcher(cfg, NewResolver("", cfg.Logger), src, snk)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestWatcherOneListPerRepository(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "shared")
	head := repo.Commit(t, "first", nil)
	repo.Tag(t, "v1", head)

	src := &source{}
	// Three spellings of one repository; "a" sorts first, so its URL is
	// the one dialled.
	src.set(
		Target{App: "a", RepoURL: repo.URL, Ref: "main", Interval: 200 * time.Millisecond},
		Target{App: "b", RepoURL: repo.URL + "/", Ref: ""},
		Target{App: "c", RepoURL: strings.Replace(repo.URL, "http://", "HTTP://", 1), Ref: "v1"},
	)
	snk := newSink()
	// Each poll reports "a" once, right after its one request, and the
	// next poll of the repository cannot start before this one has
	// reported: so at the k-th report the server has had exactly k
	// requests.
	var mu sync.Mutex
	var seen []int
	snk.onResolved = func(app string) {
		if app == "a" {
			mu.Lock()
			seen = append(seen, repo.Requests())
			mu.Unlock()
		}
	}
	startWatcher(t, newWatcher(t, Config{Interval: time.Hour}, src, snk))

	eventually(t, "five polls", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 5
	})
	mu.Lock()
	defer mu.Unlock()
	for k, n := range seen {
		if n != k+1 {
			t.Fatalf("requests at each poll = %v, want 1, 2, 3, ... (one ls-remote per poll for three applications)", seen)
		}
	}
	for _, app := range []string{"a", "b", "c"} {
		if got := snk.commit(app); got != head {
			t.Errorf("app %s resolved to %q, want %s", app, got, head)
		}
	}
}

func TestWatcherPicksUpNewCommit(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "app")
	c1 := repo.Commit(t, "first", map[string]string{"a.yaml": "1"})

	src := &source{}
	// The default interval is long; "fast" makes the repository poll
	// often, and "slow", on the same repository, gets the same polls.
	src.set(
		Target{App: "fast", RepoURL: repo.URL, Ref: "main", Interval: 200 * time.Millisecond},
		Target{App: "slow", RepoURL: repo.URL, Ref: "main"},
	)
	snk := newSink()
	startWatcher(t, newWatcher(t, Config{Interval: time.Hour}, src, snk))

	eventually(t, "the first commit", func() bool { return snk.commit("fast") == c1 && snk.commit("slow") == c1 })
	c2 := repo.Commit(t, "second", map[string]string{"a.yaml": "2"})
	eventually(t, "the new commit", func() bool { return snk.commit("fast") == c2 && snk.commit("slow") == c2 })
}

func TestWatcherChangedAndTrigger(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "app")
	c1 := repo.Commit(t, "first", nil)
	other := git.CreateRepo(t, "other")
	o1 := other.Commit(t, "first", nil)

	src := &source{}
	src.set(Target{App: "app", RepoURL: repo.URL})
	snk := newSink()
	// Polls come an hour apart: only Changed and Trigger make them happen.
	w := newWatcher(t, Config{Interval: time.Hour}, src, snk)
	startWatcher(t, w)
	eventually(t, "the first poll", func() bool { return snk.commit("app") == c1 })

	src.set(Target{App: "app", RepoURL: repo.URL}, Target{App: "new", RepoURL: other.URL, Ref: "main"})
	w.Changed()
	eventually(t, "the new application", func() bool { return snk.commit("new") == o1 })

	c2 := repo.Commit(t, "pushed", nil)
	if !w.Trigger(repo.URL + "/") {
		t.Fatal("Trigger did not find the repository")
	}
	eventually(t, "the pushed commit", func() bool { return snk.commit("app") == c2 })

	if w.Trigger(git.URL + "/unused.git") {
		t.Fatal("Trigger found a repository no application uses")
	}

	// A changed ref is resolved at once too.
	repo.Branch(t, "release", c1)
	src.set(Target{App: "app", RepoURL: repo.URL, Ref: "release"}, Target{App: "new", RepoURL: other.URL, Ref: "main"})
	w.Changed()
	eventually(t, "the changed ref", func() bool { return snk.commit("app") == c1 })
}

func TestWatcherErrorsPerApplication(t *testing.T) {
	const password = "s3cret-Passw0rd"
	git := testbed.GitServer(t)
	good := git.CreateRepo(t, "good")
	head := good.Commit(t, "first", nil)
	locked := testbed.GitServer(t, testbed.WithBasicAuth("drover", password))
	lockedRepo := locked.CreateRepo(t, "app")
	lockedHead := lockedRepo.Commit(t, "first", nil)

	src := &source{creds: map[string]Access{
		lockedRepo.URL: {Credentials: Credentials{Username: "drover", Password: "wrong-" + password}},
	}}
	src.set(
		Target{App: "ok", RepoURL: good.URL, Ref: "main"},
		Target{App: "bad-ref", RepoURL: good.URL, Ref: "nope"},
		Target{App: "missing", RepoURL: git.URL + "/missing.git"},
		Target{App: "denied", RepoURL: lockedRepo.URL},
		Target{App: "invalid", RepoURL: "file:///etc"},
	)
	snk := newSink()
	startWatcher(t, newWatcher(t, Config{Interval: 200 * time.Millisecond, RetryBase: 50 * time.Millisecond}, src, snk))

	eventually(t, "every application's outcome", func() bool {
		return snk.commit("ok") == head && snk.err("bad-ref") != nil && snk.err("missing") != nil &&
			snk.err("denied") != nil && snk.err("invalid") != nil
	})
	var refErr *RefError
	if err := snk.err("bad-ref"); !errors.As(err, &refErr) || refErr.Ref != "nope" || !errors.Is(err, ErrRefNotFound) {
		t.Errorf("bad-ref: %v, want a *RefError for nope", err)
	}
	if err := snk.err("missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v, want ErrNotFound", err)
	}
	if err := snk.err("denied"); !errors.Is(err, ErrAuth) || strings.Contains(err.Error(), password) {
		t.Errorf("denied: %v, want ErrAuth without the password", err)
	}
	if err := snk.err("invalid"); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid: %v, want ErrInvalid", err)
	}

	// Fixing the credentials clears the error on a later retry; so does
	// creating the missing repository.
	src.mu.Lock()
	src.creds[lockedRepo.URL] = Access{Credentials: Credentials{Username: "drover", Password: password}}
	src.mu.Unlock()
	missing := git.CreateRepo(t, "missing")
	missingHead := missing.Commit(t, "first", nil)
	eventually(t, "recovery", func() bool {
		return snk.commit("denied") == lockedHead && snk.commit("missing") == missingHead
	})
}

func TestWatcherRefresh(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "app")
	c1 := repo.Commit(t, "first", nil)

	src := &source{}
	src.set(
		Target{App: "web", RepoURL: repo.URL, Ref: "main"},
		Target{App: "api", RepoURL: repo.URL, Ref: "main"},
		Target{App: "broken", RepoURL: repo.URL, Ref: "nope"},
	)
	snk := newSink()
	// Not running: Refresh works on its own.
	w := newWatcher(t, Config{Interval: time.Hour}, src, snk)
	ctx := context.Background()

	got, err := w.Refresh(ctx, "web")
	if err != nil || got != c1 {
		t.Fatalf("Refresh(web) = %q, %v; want %s", got, err, c1)
	}
	c2 := repo.Commit(t, "second", nil)
	before := repo.Requests()
	got, err = w.Refresh(ctx, "web")
	if err != nil || got != c2 {
		t.Fatalf("Refresh(web) after a commit = %q, %v; want %s", got, err, c2)
	}
	if n := repo.Requests() - before; n != 1 {
		t.Fatalf("Refresh made %d requests, want 1", n)
	}
	// The whole repository was polled and reported.
	if snk.commit("web") != c2 || snk.commit("api") != c2 || snk.err("broken") == nil {
		t.Fatalf("after Refresh the sink has web %q, api %q, broken %v", snk.commit("web"), snk.commit("api"), snk.err("broken"))
	}

	var refErr *RefError
	if _, err := w.Refresh(ctx, "broken"); !errors.As(err, &refErr) {
		t.Fatalf("Refresh(broken) error = %v, want a *RefError", err)
	}
	if _, err := w.Refresh(ctx, "nobody"); !errors.Is(err, ErrUnknownApp) {
		t.Fatalf("Refresh(nobody) error = %v, want ErrUnknownApp", err)
	}

	// With Run going, Refresh and the scheduled polls share the repository.
	startWatcher(t, w)
	c3 := repo.Commit(t, "third", nil)
	if got, err := w.Refresh(ctx, "api"); err != nil || got != c3 {
		t.Fatalf("Refresh(api) while running = %q, %v; want %s", got, err, c3)
	}
}

func TestWatcherConfig(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Interval: -time.Second}, "Interval"},
		{Config{MinInterval: -time.Second}, "MinInterval"},
		{Config{RetryBase: -time.Second}, "RetryBase"},
		{Config{Timeout: -time.Second}, "Timeout"},
		{Config{Concurrency: -1}, "Concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := NewWatcher(tt.cfg, NewResolver("", nil), &source{}, newSink())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewWatcher(%+v) error = %v, want one naming %s", tt.cfg, err, tt.want)
			}
		})
	}
	if _, err := NewWatcher(Config{}, nil, &source{}, newSink()); err == nil {
		t.Fatal("NewWatcher without a Resolver succeeded")
	}
}

func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 9, time.Second, time.Minute} {
		for i := 0; i < 1000; i++ {
			got := jitter(d)
			if got < d-d/10 || got > d+d/10 {
				t.Fatalf("jitter(%v) = %v, outside ±10%%", d, got)
			}
		}
	}
}

func TestWatcherRepoInterval(t *testing.T) {
	// Never polled here; on loopback all the same.
	const url = "http://127.0.0.1:9/org/apps.git"
	tests := []struct {
		name      string
		intervals []time.Duration // one application each, all on url
		want      time.Duration
	}{
		{"default", []time.Duration{0, 0}, time.Minute},
		{"shortest application wins", []time.Duration{0, 30 * time.Second, 45 * time.Second}, 30 * time.Second},
		{"longer than the default", []time.Duration{5 * time.Minute}, time.Minute},
		{"raised to the minimum", []time.Duration{0, time.Millisecond}, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &source{}
			var targets []Target
			for i, d := range tt.intervals {
				// Spellings vary; the repository is one.
				targets = append(targets, Target{App: string(rune('a' + i)), RepoURL: url + strings.Repeat("/", i), Interval: d})
			}
			src.set(targets...)
			w, err := NewWatcher(Config{}, NewResolver("", nil), src, newSink())
			if err != nil {
				t.Fatal(err)
			}
			w.reloadIfStale(time.Now())
			if len(w.repos) != 1 {
				t.Fatalf("%d repositories, want 1", len(w.repos))
			}
			for _, st := range w.repos {
				if st.interval != tt.want || len(st.targets) != len(tt.intervals) {
					t.Fatalf("interval %v for %d apps, want %v for %d", st.interval, len(st.targets), tt.want, len(tt.intervals))
				}
			}
		})
	}
}
