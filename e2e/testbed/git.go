package testbed

import (
	"bytes"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/testlog"
)

// Git is a Git server over smart HTTP on 127.0.0.1: `git http-backend`
// behind net/http. It serves repositories made with CreateRepo, lets
// clients fetch any commit by its SHA (uploadpack.allowAnySHA1InWant, as
// agents fetching a pinned commit need; WithStockConfig leaves that out),
// and accepts pushes.
type Git struct {
	// URL is the server's base URL, http://127.0.0.1:PORT.
	URL string

	gitBin   string
	reposDir string // GIT_PROJECT_ROOT: NAME.git bare repositories
	workDir  string // one worktree per repository, where commits are made
	homeDir  string // HOME for every git process: no user config leaks in
	stock    bool   // without the settings that let clients want any SHA
	owners   bool   // record which process made each fetch

	requests  atomic.Int64
	sentBytes atomic.Int64

	mu           sync.Mutex // guards the fields below
	repoRequests map[string]int
	repos        map[string]*Repo
	// fetchesBy counts fetches by the process that made them, with
	// WithFetchOwners; 0 is a fetch whose process was not found.
	fetchesBy map[int]int
}

// GitOption configures GitServer.
type GitOption func(*gitConfig)

type gitConfig struct {
	user, password string
	stock, owners  bool
}

// WithStockConfig makes the server answer as `git http-backend` does with
// Git's defaults, as many self-hosted servers do: it sends only what its
// refs reach, so a client cannot fetch a commit by its SHA
// (uploadpack.allowAnySHA1InWant, allowReachableSHA1InWant and
// allowTipSHA1InWant are left unset).
func WithStockConfig() GitOption {
	return func(c *gitConfig) { c.stock = true }
}

// WithBasicAuth makes the server answer 401 to every request without
// these basic-auth credentials.
func WithBasicAuth(user, password string) GitOption {
	return func(c *gitConfig) { c.user, c.password = user, password }
}

// gitServerConfig is what every git process of the server runs with, set
// through the environment (GIT_CONFIG_COUNT) so no file can override it.
var gitServerConfig = [][2]string{
	{"uploadpack.allowAnySHA1InWant", "true"},
	{"uploadpack.allowReachableSHA1InWant", "true"},
	{"uploadpack.allowTipSHA1InWant", "true"},
	{"uploadpack.allowFilter", "true"},
	{"http.receivepack", "true"},
	{"safe.directory", "*"},
	{"init.defaultBranch", "main"},
	{"commit.gpgSign", "false"},
	{"tag.gpgSign", "false"},
	{"core.autocrlf", "false"},
	{"gc.auto", "0"},
}

// GitServer starts a Git server for t, closed when t ends.
func GitServer(t testing.TB, opts ...GitOption) *Git {
	t.Helper()
	var cfg gitConfig
	for _, o := range opts {
		o(&cfg)
	}
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Fatalf("testbed: git not found (%v): install it (Debian: apt-get install git)", err)
	}
	dir := t.TempDir()
	g := &Git{
		gitBin:       gitBin,
		reposDir:     filepath.Join(dir, "repos"),
		workDir:      filepath.Join(dir, "work"),
		homeDir:      filepath.Join(dir, "home"),
		stock:        cfg.stock,
		owners:       cfg.owners,
		fetchesBy:    make(map[int]int),
		repoRequests: make(map[string]int),
		repos:        make(map[string]*Repo),
	}
	for _, d := range []string{g.reposDir, g.workDir, g.homeDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	log := slog.NewLogLogger(testlog.New(t).With("component", "git-http-backend").Handler(), slog.LevelWarn)
	backend := &cgi.Handler{
		Path:   gitBin,
		Args:   []string{"http-backend"},
		Env:    append(g.env(), "GIT_PROJECT_ROOT="+g.reposDir, "GIT_HTTP_EXPORT_ALL=1"),
		Logger: log,
		Stderr: log.Writer(),
	}
	var h http.Handler = backend
	if cfg.user != "" || cfg.password != "" {
		h = basicAuth(cfg.user, cfg.password, h)
	}
	srv := httptest.NewServer(g.count(h))
	t.Cleanup(srv.Close)
	g.URL = srv.URL
	return g
}

// Requests is how many HTTP requests the server has had, rejected ones
// included. A clone or fetch over smart HTTP is two (refs, then pack); an
// ls-remote is one.
func (g *Git) Requests() int { return int(g.requests.Load()) }

// BytesSent is how many bytes of response bodies the server has sent
// (ref advertisements and packs, as Git sends them: http-backend does not
// compress), so a test can compare what two ways of fetching cost.
func (g *Git) BytesSent() int64 { return g.sentBytes.Load() }

func (g *Git) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.requests.Add(1)
		if name, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), ".git/"); ok {
			g.mu.Lock()
			g.repoRequests[name]++
			g.mu.Unlock()
		}
		if g.owners && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/git-upload-pack") {
			g.countFetch(r)
		}
		next.ServeHTTP(&countingWriter{ResponseWriter: w, n: &g.sentBytes}, r)
	})
}

// countingWriter adds the body bytes written through it to n.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func basicAuth(user, password string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="drover-testbed"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// env is the environment of every git process: a private HOME, no system
// config, the server's settings, and a fixed identity.
func (g *Git) env() []string {
	env := []string{
		"HOME=" + g.homeDir,
		"XDG_CONFIG_HOME=" + g.homeDir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Drover Test",
		"GIT_AUTHOR_EMAIL=test@drover.invalid",
		"GIT_COMMITTER_NAME=Drover Test",
		"GIT_COMMITTER_EMAIL=test@drover.invalid",
		"LC_ALL=C",
	}
	var cfg [][2]string
	for _, kv := range gitServerConfig {
		if g.stock && shaWantSettings[kv[0]] {
			continue
		}
		cfg = append(cfg, kv)
	}
	env = append(env, fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(cfg)))
	for i, kv := range cfg {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}

// shaWantSettings are the settings of gitServerConfig that let a client
// fetch a commit by its SHA, which WithStockConfig leaves out.
var shaWantSettings = map[string]bool{
	"uploadpack.allowAnySHA1InWant":       true,
	"uploadpack.allowReachableSHA1InWant": true,
	"uploadpack.allowTipSHA1InWant":       true,
}

// Repo is a repository on a Git server. Its methods are safe for
// concurrent use; changes to one repository are made one at a time.
type Repo struct {
	// Name is the repository's name, as given to CreateRepo.
	Name string
	// URL is the repository's clone URL, http://127.0.0.1:PORT/NAME.git,
	// without credentials.
	URL string

	g    *Git
	bare string
	work string

	mu      sync.Mutex // guards the worktree and commits
	commits int
}

var repoName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$`)

// CreateRepo makes an empty repository NAME (slashes allowed, e.g.
// "org/apps"; no ".git" suffix) whose default branch is main.
func (g *Git) CreateRepo(t testing.TB, name string) *Repo {
	t.Helper()
	return g.createRepo(t, name, "sha1")
}

// CreateRepoSHA256 makes a repository like CreateRepo, in Git's SHA-256
// object format: its commits are named by 64 hexadecimal characters.
func (g *Git) CreateRepoSHA256(t testing.TB, name string) *Repo {
	t.Helper()
	return g.createRepo(t, name, "sha256")
}

func (g *Git) createRepo(t testing.TB, name, objectFormat string) *Repo {
	t.Helper()
	if !repoName.MatchString(name) || strings.HasSuffix(name, ".git") || strings.Contains(name, "..") {
		t.Fatalf("testbed: bad repository name %q: use letters, digits, '.', '_', '-' and '/', without .git", name)
	}
	g.mu.Lock()
	if _, dup := g.repos[name]; dup {
		g.mu.Unlock()
		t.Fatalf("testbed: repository %q exists", name)
	}
	r := &Repo{
		Name: name,
		URL:  g.URL + "/" + name + ".git",
		g:    g,
		bare: filepath.Join(g.reposDir, filepath.FromSlash(name)+".git"),
		work: filepath.Join(g.workDir, filepath.FromSlash(name)),
	}
	g.repos[name] = r
	g.mu.Unlock()

	r.mu.Lock()
	defer r.mu.Unlock()
	r.git(t, "", "init", "-q", "--bare", "--object-format="+objectFormat, "-b", "main", r.bare)
	r.git(t, "", "init", "-q", "--object-format="+objectFormat, "-b", "main", r.work)
	r.git(t, r.work, "remote", "add", "origin", r.bare)
	return r
}

// Requests is how many HTTP requests the server has had for this
// repository.
func (r *Repo) Requests() int {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	return r.g.repoRequests[r.Name]
}

// Commit writes files (path relative to the repository root, '/'
// separated, directories made as needed; an existing file is overwritten),
// commits them with msg on main, and returns the commit's SHA. With no
// files it makes an empty commit.
func (r *Repo) Commit(t testing.TB, msg string, files map[string]string) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, content := range files {
		full := r.pathIn(t, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatalf("testbed: %v", err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatalf("testbed: %v", err)
		}
	}
	r.git(t, r.work, "add", "-A")
	return r.commitLocked(t, msg)
}

// Remove deletes paths (files or whole directories) in a commit on main
// and returns its SHA. A path that does not exist fails the test.
func (r *Repo) Remove(t testing.TB, msg string, paths ...string) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	args := []string{"rm", "-r", "-q", "--"}
	for _, p := range paths {
		r.pathIn(t, p)
		args = append(args, p)
	}
	r.git(t, r.work, args...)
	return r.commitLocked(t, msg)
}

func (r *Repo) commitLocked(t testing.TB, msg string) string {
	t.Helper()
	r.commits++
	r.gitAt(t, r.work, r.commitTime(), "commit", "-q", "--allow-empty", "--no-verify", "-m", msg)
	sha := strings.TrimSpace(r.git(t, r.work, "rev-parse", "HEAD"))
	r.git(t, r.work, "push", "-q", "origin", "HEAD:refs/heads/main")
	return sha
}

// Tag points the lightweight tag name at commit sha, moving it if it
// exists.
func (r *Repo) Tag(t testing.TB, name, sha string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.git(t, r.bare, "tag", "-f", name, sha)
}

// AnnotatedTag points the annotated tag name, with message msg, at commit
// sha, moving it if it exists. Clients see it peeled (name^{}) in the refs.
func (r *Repo) AnnotatedTag(t testing.TB, name, sha, msg string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits++
	r.gitAt(t, r.bare, r.commitTime(), "tag", "-f", "-a", "-m", msg, name, sha)
}

// Branch points branch name at commit sha, creating or moving it. Commit
// only ever advances main.
func (r *Repo) Branch(t testing.TB, name, sha string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.git(t, r.bare, "update-ref", "refs/heads/"+name, sha)
}

// Head returns the SHA main points at.
func (r *Repo) Head(t testing.TB) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.TrimSpace(r.git(t, r.bare, "rev-parse", "--verify", "refs/heads/main^{commit}"))
}

// pathIn checks that p names something inside the worktree and returns
// its path there.
func (r *Repo) pathIn(t testing.TB, p string) string {
	t.Helper()
	clean := filepath.ToSlash(filepath.Clean(filepath.FromSlash(p)))
	if p == "" || filepath.IsAbs(p) || clean == "." || clean == ".." || strings.HasPrefix(clean, "../") || clean == ".git" || strings.HasPrefix(clean, ".git/") {
		t.Fatalf("testbed: path %q is not inside the repository", p)
	}
	return filepath.Join(r.work, filepath.FromSlash(clean))
}

// commitTime makes commit and tag dates a fixed sequence, one minute
// apart, so the same steps make the same SHAs on every run.
func (r *Repo) commitTime() time.Time {
	return time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.commits) * time.Minute)
}

func (r *Repo) git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	return r.gitAt(t, dir, r.commitTime(), args...)
}

func (r *Repo) gitAt(t testing.TB, dir string, at time.Time, args ...string) string {
	t.Helper()
	cmd := exec.Command(r.g.gitBin, args...)
	cmd.Dir = dir
	date := fmt.Sprintf("@%d +0000", at.Unix())
	cmd.Env = append(r.g.env(), "PATH="+os.Getenv("PATH"), "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testbed: git %s (repository %s): %v\n%s%s", strings.Join(args, " "), r.Name, err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}
