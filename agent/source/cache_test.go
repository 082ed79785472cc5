package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/retry"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func newCache(t *testing.T, dir string, maxBytes int64) *Cache {
	t.Helper()
	c, err := NewCache(dir, maxBytes, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkout(t *testing.T, c *Cache, repoURL, commit string) (string, func()) {
	t.Helper()
	dir, release, err := c.Checkout(t.Context(), repoURL, nil, commit, "")
	if err != nil {
		t.Fatalf("Checkout %s: %v", commit, err)
	}
	t.Cleanup(release)
	return dir, release
}

// files reads every file under dir, by slash-separated relative path.
func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalFiles(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestCheckoutCommits(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	repo := srv.CreateRepo(t, "org/apps")
	first := repo.Commit(t, "first", map[string]string{
		"app/deploy.yaml":    "replicas: 1\n",
		"app/nested/cm.yaml": "kind: ConfigMap\n",
		"README":             "one\n",
	})
	second := repo.Commit(t, "second", map[string]string{"app/deploy.yaml": "replicas: 2\n"})
	third := repo.Remove(t, "third", "app/nested")

	c := newCache(t, t.TempDir(), 1<<30)
	tests := []struct {
		commit string
		want   map[string]string
	}{
		{first, map[string]string{"app/deploy.yaml": "replicas: 1\n", "app/nested/cm.yaml": "kind: ConfigMap\n", "README": "one\n"}},
		{third, map[string]string{"app/deploy.yaml": "replicas: 2\n", "README": "one\n"}},
		{second, map[string]string{"app/deploy.yaml": "replicas: 2\n", "app/nested/cm.yaml": "kind: ConfigMap\n", "README": "one\n"}},
		// Upper case is the same commit.
		{strings.ToUpper(first), map[string]string{"app/deploy.yaml": "replicas: 1\n", "app/nested/cm.yaml": "kind: ConfigMap\n", "README": "one\n"}},
	}
	for _, tt := range tests {
		dir, _ := checkout(t, c, repo.URL, tt.commit)
		if got := files(t, dir); !equalFiles(got, tt.want) {
			t.Errorf("commit %s: files %v, want %v", tt.commit, got, tt.want)
		}
		if !strings.HasPrefix(dir, c.dir+string(filepath.Separator)) || strings.Contains(dir, "apps") {
			t.Errorf("commit %s: dir %s not under %s, or names the repository", tt.commit, dir, c.dir)
		}
	}

	// Everything is cached now: another checkout asks the server nothing,
	// also through another spelling of the same repository.
	before := srv.Requests()
	checkout(t, c, strings.TrimSuffix(repo.URL, ".git")+"/", second)
	if n := srv.Requests() - before; n != 0 {
		t.Errorf("cached checkout made %d requests, want 0", n)
	}
}

func TestCheckoutFetchesOnceForConcurrentCheckouts(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	repo := srv.CreateRepo(t, "apps")
	sha := repo.Commit(t, "one", map[string]string{"a.yaml": "a: 1\n"})

	// What one fetch costs.
	before := srv.Requests()
	checkout(t, newCache(t, t.TempDir(), 1<<30), repo.URL, sha)
	oneFetch := srv.Requests() - before
	if oneFetch == 0 {
		t.Fatal("a checkout into an empty cache made no requests")
	}

	c := newCache(t, t.TempDir(), 1<<30)
	before = srv.Requests()
	const n = 4
	dirs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var release func()
			dirs[i], release, errs[i] = c.Checkout(t.Context(), repo.URL, nil, sha, "")
			if release != nil {
				t.Cleanup(release)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("checkout %d: %v", i, err)
		}
		if dirs[i] != dirs[0] {
			t.Errorf("checkout %d: dir %s, checkout 0: %s", i, dirs[i], dirs[0])
		}
	}
	if got := srv.Requests() - before; got != oneFetch {
		t.Errorf("%d concurrent checkouts made %d requests, one fetch is %d", n, got, oneFetch)
	}
}

func TestCheckoutReusesCacheAfterRestart(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	repo := srv.CreateRepo(t, "apps")
	first := repo.Commit(t, "one", map[string]string{"a.yaml": "a: 1\n"})
	second := repo.Commit(t, "two", map[string]string{"a.yaml": "a: 2\n"})
	dir := t.TempDir()

	c := newCache(t, dir, 1<<30)
	checkout(t, c, repo.URL, first)
	// A crash in the middle of materialising leaves a temporary tree; it
	// must neither be mistaken for a commit nor survive.
	var key string
	entries, err := os.ReadDir(filepath.Join(dir, reposDir))
	if err != nil || len(entries) != 1 {
		t.Fatalf("repos: %v, %v", entries, err)
	}
	key = entries[0].Name()
	stale := filepath.Join(dir, reposDir, key, treesDir, tmpPrefix+second+"-123")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}

	before := srv.Requests()
	c2 := newCache(t, dir, 1<<30)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary tree survived a restart: %v", err)
	}
	got, _ := checkout(t, c2, repo.URL, first)
	if n := srv.Requests() - before; n != 0 {
		t.Errorf("checkout after restart made %d requests, want 0", n)
	}
	if f := files(t, got); f["a.yaml"] != "a: 1\n" {
		t.Errorf("after restart: %v", f)
	}
	// A commit the cache does not have yet is fetched into the same
	// repository.
	got, _ = checkout(t, c2, repo.URL, second)
	if f := files(t, got); f["a.yaml"] != "a: 2\n" {
		t.Errorf("second commit: %v", f)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, reposDir)); len(entries) != 1 {
		t.Errorf("repos after restart: %d, want 1", len(entries))
	}
}

func TestCheckoutEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	var urls, shas []string
	for _, name := range []string{"a", "b", "c"} {
		r := srv.CreateRepo(t, name)
		urls = append(urls, r.URL)
		// Varied content, so compression keeps it about this size.
		var content strings.Builder
		for i := range 4096 {
			fmt.Fprintf(&content, "%s-%d-%x\n", name, i, i*7919)
		}
		shas = append(shas, r.Commit(t, "one", map[string]string{"f": content.String()}))
	}
	// What one repository with its tree takes.
	scratch := t.TempDir()
	checkout(t, newCache(t, scratch, 1<<30), urls[0], shas[0])
	one := dirSize(t, scratch)

	t.Run("least recently used goes first", func(t *testing.T) {
		dir := t.TempDir()
		c := newCache(t, dir, one*5/2)
		dirA, releaseA := checkout(t, c, urls[0], shas[0])
		dirB, releaseB := checkout(t, c, urls[1], shas[1])
		releaseA()
		releaseB()
		// a is used again, so b is now the least recently used.
		_, releaseA = checkout(t, c, urls[0], shas[0])
		releaseA()
		dirC, _ := checkout(t, c, urls[2], shas[2])
		if _, err := os.Stat(dirB); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("least recently used tree %s not evicted: %v", dirB, err)
		}
		for _, d := range []string{dirA, dirC} {
			if _, err := os.Stat(d); err != nil {
				t.Errorf("recently used tree evicted: %v", err)
			}
		}
		if size := dirSize(t, dir); size > one*5/2 {
			t.Errorf("cache holds %d bytes, limit %d", size, one*5/2)
		}
	})

	t.Run("in use or just used stays", func(t *testing.T) {
		dir := t.TempDir()
		// Room for nothing: everything that can go, goes.
		c := newCache(t, dir, 1)
		dirA, releaseA := checkout(t, c, urls[0], shas[0])
		dirB, releaseB := checkout(t, c, urls[1], shas[1])
		if _, err := os.Stat(dirA); err != nil {
			t.Fatalf("tree in use was evicted: %v", err)
		}
		if n := repoCount(t, dir); n != 2 {
			t.Fatalf("repositories with both in use: %d, want 2", n)
		}
		releaseA()
		releaseB()
		dirC, _ := checkout(t, c, urls[2], shas[2])
		for _, d := range []string{dirA, dirB} {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s not evicted: %v", d, err)
			}
		}
		if _, err := os.Stat(dirC); err != nil {
			t.Errorf("just used tree evicted: %v", err)
		}
		if n := repoCount(t, dir); n != 1 {
			t.Errorf("repositories after eviction: %d, want 1", n)
		}
		if trash, _ := os.ReadDir(filepath.Join(dir, trashDir)); len(trash) != 0 {
			t.Errorf("trash not emptied: %d entries", len(trash))
		}

		// An evicted repository is fetched again when needed.
		before := srv.Requests()
		got, _ := checkout(t, c, urls[0], shas[0])
		if srv.Requests() == before {
			t.Error("checkout of an evicted repository made no requests")
		}
		if f := files(t, got); !strings.HasPrefix(f["f"], "a-0-0\n") {
			t.Error("refetched tree differs")
		}
	})
}

func repoCount(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, reposDir))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		n += info.Size()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCheckoutErrors(t *testing.T) {
	t.Parallel()
	const user, password = "drover", "right-password-4711"
	srv := testbed.GitServer(t, testbed.WithBasicAuth(user, password))
	repo := srv.CreateRepo(t, "private")
	sha := repo.Commit(t, "one", map[string]string{"a.yaml": "a: 1\n"})
	u, err := url.Parse(repo.URL)
	if err != nil {
		t.Fatal(err)
	}
	withUserinfo := func(ui *url.Userinfo) string {
		v := *u
		v.User = ui
		return v.String()
	}
	creds := &droverv1.RepoCredentials{Username: user, Password: password}
	// Every Git session go-git opens from here on, to check that the
	// inputs validation refuses are refused before any.
	dials := testbed.WatchGitDials(t)
	// Hosts that fail validation are on loopback all the same, at a port
	// that closes every connection, in case validation lets one through.
	closer := testbed.ClosingListener(t)

	// The right credentials work, from the assignment or in the URL.
	for _, tc := range []struct {
		url   string
		creds *droverv1.RepoCredentials
	}{
		{repo.URL, creds},
		{withUserinfo(url.UserPassword(user, password)), nil},
	} {
		c := newCache(t, t.TempDir(), 1<<30)
		dir, release, err := c.Checkout(t.Context(), tc.url, tc.creds, sha, "")
		if err != nil {
			t.Fatalf("Checkout with credentials: %v", err)
		}
		if f := files(t, dir); f["a.yaml"] != "a: 1\n" {
			t.Errorf("files: %v", f)
		}
		release()
	}

	tests := []struct {
		name   string
		url    string
		creds  *droverv1.RepoCredentials
		commit string
		is     error
		secret string // must not appear in the error
	}{
		{"wrong password", repo.URL, &droverv1.RepoCredentials{Username: user, Password: "wrong-password-0815"}, sha, ErrAuth, "wrong-password-0815"},
		{"no credentials", repo.URL, nil, sha, ErrAuth, ""},
		{"wrong password in URL", withUserinfo(url.UserPassword(user, "url-password-1234")), nil, sha, ErrAuth, "url-password-1234"},
		{"token as URL user", withUserinfo(url.User("ghp_tokentokentoken")), nil, sha, ErrAuth, "ghp_tokentokentoken"},
		{"unknown commit", repo.URL, creds, strings.Repeat("ab", 20), ErrUnknownCommit, password},
		{"short SHA", repo.URL, creds, sha[:12], ErrInvalid, password},
		{"ref instead of SHA", repo.URL, creds, "main", ErrInvalid, password},
		{"zero SHA", repo.URL, creds, strings.Repeat("0", 40), ErrInvalid, password},
		{"local path", "/etc", nil, sha, ErrInvalid, ""},
		{"file URL", "file:///etc", nil, sha, ErrInvalid, ""},
		{"unsupported scheme", "ftp://user:ftp-secret-99@" + closer + "/x", nil, sha, ErrInvalid, "ftp-secret-99"},
		{"ssh without key", "git@127.0.0.1:org/repo.git", nil, sha, ErrInvalid, ""},
		{"ssh without known hosts", "ssh://git@" + closer + "/org/repo.git", &droverv1.RepoCredentials{SshPrivateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n-----END OPENSSH PRIVATE KEY-----\n"}, sha, ErrInvalid, "secret-key-material"},
		{"key for https", repo.URL, &droverv1.RepoCredentials{SshPrivateKey: "secret-key-material"}, sha, ErrInvalid, "secret-key-material"},
		{"repository not found", srv.URL + "/missing.git", creds, sha, nil, password},
	}
	// Every log line of the failing checkouts, to check for secrets.
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A fresh cache: a cached commit is served without asking the
			// server, so credentials are only checked when fetching.
			c, err := NewCache(t.TempDir(), 1<<30, logger)
			if err != nil {
				t.Fatal(err)
			}
			dialled := len(dials.To(tt.url))
			_, release, err := c.Checkout(t.Context(), tt.url, tt.creds, tt.commit, "")
			if err == nil {
				release()
				t.Fatal("Checkout succeeded")
			}
			t.Log(err)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error", err)
			}
			if retry.IsTransient(err) {
				t.Errorf("retry.IsTransient = true for %v", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			// Nothing invalid is worth a connection.
			if tt.is == ErrInvalid {
				if d := dials.To(tt.url)[dialled:]; len(d) > 0 {
					t.Errorf("refused as invalid after go-git was asked to connect to %v", d)
				}
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error contains the secret: %v", err)
			}
			if strings.Contains(e.URL, "@") {
				t.Errorf("URL %q not redacted", e.URL)
			}
		})
	}

	for _, tt := range tests {
		if tt.secret != "" && strings.Contains(logs.String(), tt.secret) {
			t.Errorf("logs contain the secret of %q", tt.name)
		}
	}

	// A server that is not there is worth retrying.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/x.git"
	dead.Close()
	_, _, err = newCache(t, t.TempDir(), 1<<30).Checkout(t.Context(), deadURL, nil, sha, "")
	if err == nil || !retry.IsTransient(err) {
		t.Errorf("unreachable server: err %v, retryable %v", err, retry.IsTransient(err))
	}
	if retry.IsTransient(nil) || retry.IsTransient(errors.New("not from this package")) {
		t.Error("retry.IsTransient is true for nil or a foreign error")
	}
	// Cancellation is not the input's fault.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err = newCache(t, t.TempDir(), 1<<30).Checkout(ctx, repo.URL, creds, sha, "")
	if !errors.Is(err, context.Canceled) || !retry.IsTransient(err) {
		t.Errorf("cancelled: err %v, retryable %v", err, retry.IsTransient(err))
	}
}

// TestCheckoutWithoutSHAWants checks the fallback for servers that do not
// send commits by their SHA: the test bed's server behind a proxy that
// removes the allow-*-sha1-in-want capabilities from its advertisement, as
// an older or stricter server would.
func TestCheckoutWithoutSHAWants(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	repo := srv.CreateRepo(t, "apps")
	first := repo.Commit(t, "one", map[string]string{"a.yaml": "a: 1\n"})
	repo.Commit(t, "two", map[string]string{"a.yaml": "a: 2\n"})
	proxyURL := stripSHAWants(t, srv.URL)
	repoURL := proxyURL + "/apps.git"

	c := newCache(t, t.TempDir(), 1<<30)
	// An older commit, not the tip of any branch.
	dir, _ := checkout(t, c, repoURL, first)
	if f := files(t, dir); f["a.yaml"] != "a: 1\n" {
		t.Errorf("files: %v", f)
	}
	_, _, err := c.Checkout(t.Context(), repoURL, nil, strings.Repeat("cd", 20), "")
	if !errors.Is(err, ErrUnknownCommit) || retry.IsTransient(err) {
		t.Errorf("unknown commit: %v (retryable %v)", err, retry.IsTransient(err))
	}
}

// stripSHAWants starts a reverse proxy to target that drops the
// allow-tip-sha1-in-want, allow-reachable-sha1-in-want and
// allow-any-sha1-in-want capabilities from upload-pack advertisements.
func stripSHAWants(t *testing.T, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasSuffix(resp.Request.URL.Path, "/info/refs") || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		out, err := rewriteAdvertisement(body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(out))
		resp.ContentLength = int64(len(out))
		resp.Header.Set("Content-Length", strconv.Itoa(len(out)))
		return nil
	}
	s := httptest.NewServer(proxy)
	t.Cleanup(s.Close)
	return s.URL
}

// rewriteAdvertisement edits the capability list (after the NUL of the
// first ref line) of a smart-HTTP ref advertisement.
func rewriteAdvertisement(body []byte) ([]byte, error) {
	var out bytes.Buffer
	r := bufio.NewReader(bytes.NewReader(body))
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			return out.Bytes(), nil
		} else if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
		if err != nil {
			return nil, err
		}
		if n < 4 {
			out.Write(hdr[:])
			continue
		}
		line := make([]byte, n-4)
		if _, err := io.ReadFull(r, line); err != nil {
			return nil, err
		}
		if refs, caps, ok := bytes.Cut(line, []byte{0}); ok {
			var kept [][]byte
			for _, c := range bytes.Fields(caps) {
				if !bytes.HasPrefix(c, []byte("allow-")) {
					kept = append(kept, c)
				}
			}
			line = append(append(refs, 0), append(bytes.Join(kept, []byte(" ")), '\n')...)
		}
		fmt.Fprintf(&out, "%04x", len(line)+4)
		out.Write(line)
	}
}

type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestNewCacheValidates(t *testing.T) {
	for _, tc := range []struct {
		dir      string
		maxBytes int64
	}{{"", 1}, {t.TempDir(), 0}, {t.TempDir(), -1}} {
		if _, err := NewCache(tc.dir, tc.maxBytes, nil); err == nil {
			t.Errorf("NewCache(%q, %d) succeeded", tc.dir, tc.maxBytes)
		}
	}
}
