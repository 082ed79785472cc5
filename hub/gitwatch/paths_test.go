package gitwatch

import (
	"context"
	"errors"
	"fmt"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	git "github.com/go-git/go-git/v5"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
)

func TestPathsChanged(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "apps")
	c1 := repo.Commit(t, "start", map[string]string{
		"apps/web/deploy.yaml":    "web: 1\n",
		"apps/api/deploy.yaml":    "api: 1\n",
		"base/kustomization.yaml": "base: 1\n",
	})
	apiChange := repo.Commit(t, "api only", map[string]string{"apps/api/deploy.yaml": "api: 2\n"})
	baseChange := repo.Commit(t, "base only", map[string]string{"base/kustomization.yaml": "base: 2\n"})
	webDeleted := repo.Remove(t, "drop web", "apps/web")
	otherAdded := repo.Commit(t, "new app", map[string]string{"apps/other/deploy.yaml": "other: 1\n"})

	tests := []struct {
		name     string
		from, to string
		paths    []string
		want     bool
	}{
		{"another app's path", c1, apiChange, []string{"apps/web"}, false},
		{"its own path", c1, apiChange, []string{"apps/api"}, true},
		{"a file", c1, apiChange, []string{"apps/api/deploy.yaml"}, true},
		{"the whole tree", c1, apiChange, []string{""}, true},
		{"the whole tree as .", c1, apiChange, []string{"."}, true},
		{"extra path unchanged", c1, apiChange, []string{"apps/web", "base"}, false},
		{"extra path changed", apiChange, baseChange, []string{"apps/web", "base"}, true},
		{"without the extra path", apiChange, baseChange, []string{"apps/web"}, false},
		{"deleted", baseChange, webDeleted, []string{"apps/web"}, true},
		{"deleted file", baseChange, webDeleted, []string{"apps/web/deploy.yaml"}, true},
		{"missing in both", webDeleted, otherAdded, []string{"apps/web"}, false},
		{"added", webDeleted, otherAdded, []string{"apps/other"}, true},
		{"path through a file", c1, apiChange, []string{"apps/web/deploy.yaml/x"}, false},
		{"spelled loosely", c1, apiChange, []string{"/apps//api/", "./apps/web"}, true},
		{"backwards", apiChange, c1, []string{"apps/api"}, true},
		{"same commit", c1, c1, []string{""}, false},
		{"upper-case SHAs", strings.ToUpper(c1), strings.ToUpper(apiChange), []string{"apps/web"}, false},
	}
	for _, cache := range []string{"disk", "memory"} {
		t.Run(cache, func(t *testing.T) {
			dir := ""
			if cache == "disk" {
				dir = t.TempDir()
			}
			r := NewResolver(dir, testlog.New(t))
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got, err := r.PathsChanged(context.Background(), repo.URL, Credentials{}, tt.from, tt.to, tt.paths)
					if err != nil {
						t.Fatal(err)
					}
					if got != tt.want {
						t.Fatalf("PathsChanged(%.7s, %.7s, %q) = %v, want %v", tt.from, tt.to, tt.paths, got, tt.want)
					}
				})
			}
		})
	}
}

func TestPathsChangedUsesCache(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "apps")
	c1 := repo.Commit(t, "one", map[string]string{"a/x.yaml": "1"})
	c2 := repo.Commit(t, "two", map[string]string{"a/x.yaml": "2"})
	c3 := repo.Commit(t, "three", map[string]string{"b/y.yaml": "3"})
	r := NewResolver(t.TempDir(), testlog.New(t))
	ctx := context.Background()

	if _, err := r.PathsChanged(ctx, repo.URL, Credentials{}, c1, c2, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	before := repo.Requests()
	// Both commits are cached, however the URL is spelled.
	if _, err := r.PathsChanged(ctx, strings.TrimSuffix(repo.URL, ".git")+".git/", Credentials{}, c2, c1, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if n := repo.Requests() - before; n != 0 {
		t.Fatalf("comparing cached commits made %d requests, want 0", n)
	}
	// A new commit is one fetch: refs, then the pack.
	changed, err := r.PathsChanged(ctx, repo.URL, Credentials{}, c2, c3, []string{"a"})
	if err != nil || changed {
		t.Fatalf("PathsChanged(c2, c3, a) = %v, %v; want false", changed, err)
	}
	if n := repo.Requests() - before; n != 2 {
		t.Fatalf("fetching one new commit made %d requests, want 2", n)
	}
}

func TestPathsChangedBoundsCache(t *testing.T) {
	srv := testbed.GitServer(t)
	dir := t.TempDir()
	r := NewResolver(dir, testlog.New(t))
	r.cache.maxRepos, r.cache.maxCommits = 2, 4

	// More commits than a cached repository may hold.
	repo := srv.CreateRepo(t, "apps")
	commits := []string{repo.Commit(t, "base", map[string]string{"a.yaml": "0"})}
	for i := 1; i <= r.cache.maxCommits+2; i++ {
		commits = append(commits, repo.Commit(t, fmt.Sprint(i), map[string]string{"a.yaml": fmt.Sprint(i)}))
	}
	for i := 1; i < len(commits); i++ {
		changed, err := r.PathsChanged(context.Background(), repo.URL, Credentials{}, commits[i-1], commits[i], []string{"a.yaml"})
		if err != nil || !changed {
			t.Fatalf("PathsChanged(%d, %d) = %v, %v; want true", i-1, i, changed, err)
		}
		if n := cachedCommits(t, dir); n > r.cache.maxCommits {
			t.Fatalf("after comparison %d the cache holds %d commits, want at most %d", i, n, r.cache.maxCommits)
		}
	}

	// More repositories than the cache may hold.
	for i := 0; i < r.cache.maxRepos+2; i++ {
		other := srv.CreateRepo(t, fmt.Sprint("other", i))
		c1 := other.Commit(t, "one", map[string]string{"a.yaml": "1"})
		c2 := other.Commit(t, "two", map[string]string{"a.yaml": "2"})
		if _, err := r.PathsChanged(context.Background(), other.URL, Credentials{}, c1, c2, []string{"a.yaml"}); err != nil {
			t.Fatal(err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) > r.cache.maxRepos {
			t.Fatalf("cache holds %d repositories, want at most %d", len(entries), r.cache.maxRepos)
		}
	}
}

// cachedCommits is the most commits any repository in the cache holds.
func cachedCommits(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for _, e := range entries {
		repo, err := git.PlainOpen(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		most = max(most, countCacheRefs(repo))
	}
	return most
}

func TestPathsChangedConcurrent(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "apps")
	c1 := repo.Commit(t, "one", map[string]string{"a/x.yaml": "1"})
	c2 := repo.Commit(t, "two", map[string]string{"a/x.yaml": "2"})
	r := NewResolver(t.TempDir(), testlog.New(t))

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < cap(errs); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			changed, err := r.PathsChanged(context.Background(), repo.URL, Credentials{}, c1, c2, []string{"a"})
			if err == nil && !changed {
				err = errors.New("changed = false, want true")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestPathsChangedErrors(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "apps")
	c1 := repo.Commit(t, "one", map[string]string{"a/x.yaml": "1"})
	unknown := strings.Repeat("ab", 20)

	tests := []struct {
		name     string
		from, to string
		paths    []string
		wantErr  error
		wantText string
	}{
		{"short from", c1[:7], c1, []string{"a"}, ErrInvalid, "from"},
		{"branch as to", c1, "main", []string{"a"}, ErrInvalid, "to"},
		{"no paths", c1, c1, nil, ErrInvalid, "paths"},
		{"climbing path", c1, c1, []string{"a", "../etc"}, ErrInvalid, "paths[1]"},
		{".git path", c1, c1, []string{".git/config"}, ErrInvalid, "paths[0]"},
		{"commit not on the server", c1, unknown, []string{"a"}, errAny, unknown},
	}
	r := NewResolver(t.TempDir(), testlog.New(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.PathsChanged(context.Background(), repo.URL, Credentials{}, tt.from, tt.to, tt.paths)
			if err == nil {
				t.Fatal("PathsChanged succeeded, want an error")
			}
			t.Logf("error: %v", err)
			if tt.wantErr != errAny && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) || !strings.Contains(err.Error(), repo.URL) {
				t.Fatalf("error %q does not name %q and the repository", err, tt.wantText)
			}
		})
	}
}

func TestPathsChangedFallsBackWithoutFetchBySHA(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "apps")
	c1 := repo.Commit(t, "one", map[string]string{"a/x.yaml": "1", "b/y.yaml": "1"})
	c2 := repo.Commit(t, "two", map[string]string{"a/x.yaml": "2"})
	url := servedWithoutSHAFetch(t, repo)

	r := NewResolver(t.TempDir(), testlog.New(t))
	for _, tt := range []struct {
		path string
		want bool
	}{{"a", true}, {"b", false}} {
		changed, err := r.PathsChanged(context.Background(), url, Credentials{}, c1, c2, []string{tt.path})
		if err != nil || changed != tt.want {
			t.Fatalf("PathsChanged(c1, c2, %s) over a server without fetch by SHA = %v, %v; want %v", tt.path, changed, err, tt.want)
		}
	}
}

// servedWithoutSHAFetch serves a bare copy of repo through git http-backend
// with git's defaults, which advertise no allow-*-sha1-in-want capability
// to protocol v0/v1 clients such as go-git: the servers PathsChanged must
// fall back for. (The test bed's server allows fetch by any SHA.)
func servedWithoutSHAFetch(t *testing.T, repo *testbed.Repo) string {
	t.Helper()
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0"}
	clone := exec.Command(gitBin, "clone", "-q", "--bare", repo.URL, filepath.Join(root, "copy.git"))
	clone.Env = append(env, "PATH="+os.Getenv("PATH"))
	if out, err := clone.CombinedOutput(); err != nil {
		t.Fatalf("git clone --bare: %v\n%s", err, out)
	}
	srv := httptest.NewServer(&cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  append(env, "GIT_PROJECT_ROOT="+root, "GIT_HTTP_EXPORT_ALL=1"),
	})
	t.Cleanup(srv.Close)
	return srv.URL + "/copy.git"
}
