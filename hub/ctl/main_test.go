package ctl_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/ctl"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// clockOffset moves droverctl's clock ahead of the hub's. Everything the
// hub stamps during a test is a few seconds old at most, so every age
// reads "2h" however slow the machine is, and the goldens stay stable.
const clockOffset = 2 * time.Hour

// testHub is a hub running in-process on a fresh database.
type testHub struct {
	*server.Hub
	url   string // http://127.0.0.1:PORT
	admin string // the initial admin token
}

func startHub(t *testing.T) *testHub {
	t.Helper()
	// The hub's data directory must be traversable by the unprivileged user
	// the hub would run PostgreSQL as; t.TempDir's parents are not.
	dir, err := os.MkdirTemp("", "droverctl-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.DatabaseURL = testbed.Postgres(t)
	cfg.AgentAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Replica = "hub-test"
	// Refs resolve only when a test asks (apply, app refresh), so which
	// call made a release is known.
	cfg.PollInterval = time.Hour
	h, err := server.Start(context.Background(), cfg, testlog.New(t), io.Discard)
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	return &testHub{Hub: h, url: "http://" + h.HTTPAddr(), admin: strings.TrimSpace(string(tok))}
}

// registerCluster registers a cluster the way an agent's Register does,
// straight through the store, and puts it into the fleet.
func (h *testHub) registerCluster(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	tok, _, err := h.Store().CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Labels: labels}, "test", time.Now())
	if err != nil {
		t.Fatalf("create join token: %v", err)
	}
	if _, err := h.Store().CreateClusterWithJoinToken(ctx, tok, name, "serial-"+name, time.Now()); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	h.Controller().ClusterChanged(ctx, name)
}

// session runs droverctl commands against a hub as an operator would, and
// keeps a transcript of them for a golden file.
type session struct {
	t   *testing.T
	hub *testHub
	// dir holds the session's files and its config file.
	dir string
	env map[string]string
	// subst replaces generated values (ids, tokens, commits, ports) in the
	// transcript with stable placeholders, in order.
	subst      []string
	transcript bytes.Buffer
	// noRecord leaves runs out of the transcript.
	noRecord bool
	// pageSize is droverctl's page size; 0 is its default.
	pageSize int
	// requests counts droverctl's requests by path.
	requests countingTransport
}

// countingTransport counts requests by URL path.
type countingTransport struct {
	mu     sync.Mutex // guards the field below
	byPath map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if c.byPath == nil {
		c.byPath = map[string]int{}
	}
	c.byPath[r.URL.Path]++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

// count returns the requests to path so far and starts counting again.
func (c *countingTransport) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.byPath[path]
	delete(c.byPath, path)
	return n
}

func newSession(t *testing.T, h *testHub) *session {
	s := &session{t: t, hub: h, dir: t.TempDir()}
	s.env = map[string]string{"DROVER_CONFIG": filepath.Join(s.dir, "config", "config.yaml")}
	s.replace(s.dir+"/", "", h.url, "http://HUB")
	return s
}

// replace adds old, new pairs to the transcript's substitutions.
func (s *session) replace(oldnew ...string) { s.subst = append(s.subst, oldnew...) }

// result is what one droverctl run printed.
type result struct {
	stdout, stderr string
	code           int
}

// run runs droverctl with args and stdin, records it and returns what it
// printed.
func (s *session) run(stdin string, args ...string) result {
	s.t.Helper()
	var out, errOut bytes.Buffer
	c := &ctl.CLI{
		Stdin:      strings.NewReader(stdin),
		Stdout:     &out,
		Stderr:     &errOut,
		Getenv:     func(k string) string { return s.env[k] },
		Now:        func() time.Time { return time.Now().Add(clockOffset) },
		PageSize:   s.pageSize,
		HTTPClient: &http.Client{Transport: &s.requests},
	}
	code := c.Run(context.Background(), args)
	r := result{stdout: out.String(), stderr: errOut.String(), code: code}
	if s.noRecord {
		return r
	}
	fmt.Fprintf(&s.transcript, "$ droverctl %s\n", strings.Join(quoteArgs(args), " "))
	s.transcript.WriteString(out.String())
	for _, l := range strings.SplitAfter(errOut.String(), "\n") {
		if l != "" {
			s.transcript.WriteString("! " + l)
		}
	}
	fmt.Fprintf(&s.transcript, "(exit %d)\n\n", code)
	return r
}

// must runs droverctl and fails the test unless it succeeds.
func (s *session) must(stdin string, args ...string) result {
	s.t.Helper()
	r := s.run(stdin, args...)
	if r.code != 0 {
		s.t.Fatalf("droverctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// fails runs droverctl and fails the test unless it exits with code.
func (s *session) fails(code int, stdin string, args ...string) result {
	s.t.Helper()
	r := s.run(stdin, args...)
	if r.code != code {
		s.t.Fatalf("droverctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " ,()'\"") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

// writeFile writes a file into the session's directory and returns its
// path.
func (s *session) writeFile(name, content string) string {
	s.t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// login saves the hub's URL and the admin token to the session's config.
func (s *session) login() {
	s.t.Helper()
	s.must(s.hub.admin+"\n", "login", "--server", s.hub.url)
}

// tokenText matches join and API tokens.
var tokenText = regexp.MustCompile(`\b[a-z2-7]{8}\.[a-z2-7]{32}\b`)

// timestamp matches the absolute times of -o json and -o yaml.
var timestamp = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)

// golden compares the normalised transcript with testdata/NAME.golden, or
// rewrites the file with -update.
func (s *session) golden(name string) {
	s.t.Helper()
	got := s.transcript.String()
	got = tokenText.ReplaceAllString(got, "<token>")
	got = timestamp.ReplaceAllString(got, "<time>")
	got = strings.NewReplacer(s.subst...).Replace(got)
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			s.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			s.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		s.t.Fatalf("%v (run go test ./hub/ctl -update to create it)", err)
	}
	if got != string(want) {
		s.t.Errorf("transcript differs from %s (go test ./hub/ctl -update rewrites it)\n%s", path, diff(string(want), got))
	}
}

// diff shows the lines that differ, enough to see what changed.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want: %q\n  got:  %q\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// sortedNames is for placeholders numbered in a stable order.
func sortedNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
