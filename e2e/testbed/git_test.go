package testbed

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGitCloneAtCommit(t *testing.T) {
	t.Parallel()
	srv := GitServer(t)
	repo := srv.CreateRepo(t, "org/apps")
	first := repo.Commit(t, "first", map[string]string{
		"app/deploy.yaml":    "replicas: 1\n",
		"app/nested/cm.yaml": "kind: ConfigMap\n",
		"README":             "one\n",
	})
	second := repo.Commit(t, "second", map[string]string{"app/deploy.yaml": "replicas: 2\n"})
	if first == second || len(first) != 40 {
		t.Fatalf("commits %q and %q", first, second)
	}
	if head := repo.Head(t); head != second {
		t.Fatalf("Head = %s, want %s", head, second)
	}

	dir := t.TempDir()
	cloned, err := git.PlainCloneContext(t.Context(), dir, false, &git.CloneOptions{URL: repo.URL})
	if err != nil {
		t.Fatalf("clone %s: %v", repo.URL, err)
	}
	wt, err := cloned.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "app/deploy.yaml")); got != "replicas: 2\n" {
		t.Fatalf("at head: %q", got)
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: plumbing.NewHash(first)}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "app/deploy.yaml")); got != "replicas: 1\n" {
		t.Fatalf("at first commit: %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "app/nested/cm.yaml")); got != "kind: ConfigMap\n" {
		t.Fatalf("nested file: %q", got)
	}
	if srv.Requests() < 2 || repo.Requests() != srv.Requests() {
		t.Fatalf("requests: server %d, repository %d", srv.Requests(), repo.Requests())
	}
}

// TestGitReproducibleSHAs checks that commits are deterministic: the same
// steps on two servers give the same SHAs.
func TestGitReproducibleSHAs(t *testing.T) {
	t.Parallel()
	var shas [2][2]string
	for i := range shas {
		r := GitServer(t).CreateRepo(t, "apps")
		shas[i][0] = r.Commit(t, "one", map[string]string{"a": "1"})
		shas[i][1] = r.Commit(t, "two", map[string]string{"a": "2"})
	}
	if shas[0] != shas[1] {
		t.Fatalf("same steps, different SHAs: %v", shas)
	}
}

func TestGitBasicAuth(t *testing.T) {
	t.Parallel()
	srv := GitServer(t, WithBasicAuth("drover", "s3cret"))
	repo := srv.CreateRepo(t, "private")
	repo.Commit(t, "init", map[string]string{"a.yaml": "a: 1\n"})

	clone := func(auth transport.AuthMethod) error {
		_, err := git.CloneContext(t.Context(), memory.NewStorage(), nil, &git.CloneOptions{URL: repo.URL, Auth: auth})
		return err
	}
	if err := clone(nil); !errors.Is(err, transport.ErrAuthenticationRequired) {
		t.Fatalf("clone without credentials: got %v, want %v", err, transport.ErrAuthenticationRequired)
	}
	if err := clone(&githttp.BasicAuth{Username: "drover", Password: "wrong"}); err == nil {
		t.Fatal("clone with a wrong password succeeded")
	} else {
		t.Logf("wrong password: %v", err)
	}
	if err := clone(&githttp.BasicAuth{Username: "drover", Password: "s3cret"}); err != nil {
		t.Fatalf("clone with credentials: %v", err)
	}
}

// TestGitFetchCommitBySHA fetches one commit that no ref points at any
// more, shallow, as the agent fetches a pinned release.
func TestGitFetchCommitBySHA(t *testing.T) {
	t.Parallel()
	srv := GitServer(t)
	repo := srv.CreateRepo(t, "pinned")
	first := repo.Commit(t, "first", map[string]string{"app/config.yaml": "version: 1\n"})
	repo.Commit(t, "second", map[string]string{"app/config.yaml": "version: 2\n"})
	repo.Remove(t, "third", "app")

	local, err := git.Init(memory.NewStorage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{repo.URL}}); err != nil {
		t.Fatal(err)
	}
	err = local.FetchContext(t.Context(), &git.FetchOptions{
		RemoteName: "origin",
		RefSpecs:   []config.RefSpec{config.RefSpec(first + ":refs/heads/pinned")},
		Depth:      1,
	})
	if err != nil {
		t.Fatalf("the Git server does not serve a commit by SHA (uploadpack.allowAnySHA1InWant): fetch %s: %v", first, err)
	}
	commit, err := local.CommitObject(plumbing.NewHash(first))
	if err != nil {
		t.Fatal(err)
	}
	f, err := commit.File("app/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.Contents(); got != "version: 1\n" {
		t.Fatalf("app/config.yaml at %s: %q", first, got)
	}
	// Depth 1: the parent is not there.
	if len(commit.ParentHashes) != 0 {
		if _, err := local.CommitObject(commit.ParentHashes[0]); err == nil {
			t.Error("shallow fetch brought the parent too")
		}
	}
}

// TestGitStockConfig checks that a server WithStockConfig refuses a commit
// by its SHA, as `git http-backend` with Git's defaults does, still serves
// its refs, and that BytesSent counts what it sent.
func TestGitStockConfig(t *testing.T) {
	t.Parallel()
	srv := GitServer(t, WithStockConfig())
	repo := srv.CreateRepo(t, "stock")
	first := repo.Commit(t, "first", map[string]string{"a.yaml": "a: 1\n"})
	repo.Commit(t, "second", map[string]string{"a.yaml": "a: 2\n"})

	fetch := func(spec string) error {
		rem := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{repo.URL}})
		return rem.FetchContext(t.Context(), &git.FetchOptions{RefSpecs: []config.RefSpec{config.RefSpec(spec)}, Depth: 1})
	}
	if err := fetch(first + ":refs/heads/pinned"); !errors.Is(err, git.ErrExactSHA1NotSupported) {
		t.Fatalf("fetch by SHA from a stock server: %v, want %v", err, git.ErrExactSHA1NotSupported)
	}
	before := srv.BytesSent()
	if err := fetch("+refs/heads/main:refs/heads/main"); err != nil {
		t.Fatalf("fetch main: %v", err)
	}
	// At least the pack: a commit, a tree and a blob.
	if sent := srv.BytesSent() - before; sent < 100 {
		t.Errorf("BytesSent grew by %d for a fetch", sent)
	}
}

func TestGitRefs(t *testing.T) {
	t.Parallel()
	srv := GitServer(t)
	repo := srv.CreateRepo(t, "refs")
	one := repo.Commit(t, "one", map[string]string{"a/x.yaml": "x", "b.yaml": "b"})
	two := repo.Remove(t, "drop a", "a")
	repo.Tag(t, "v1", one)
	repo.AnnotatedTag(t, "v2", two, "release two")
	repo.Branch(t, "stable", one)

	before := srv.Requests()
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{repo.URL}})
	refs, err := remote.ListContext(t.Context(), &git.ListOptions{PeelingOption: git.AppendPeeled})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.Requests() - before; got != 1 {
		t.Errorf("ls-remote took %d requests, want 1", got)
	}
	got := map[string]string{}
	for _, r := range refs {
		if r.Type() == plumbing.HashReference {
			got[r.Name().String()] = r.Hash().String()
		}
	}
	want := map[string]string{
		"refs/heads/main":      two,
		"refs/heads/stable":    one,
		"refs/tags/v1":         one,
		"refs/tags/v2" + "^{}": two,
	}
	for name, sha := range want {
		if got[name] != sha {
			t.Errorf("%s = %q, want %s (all: %v)", name, got[name], sha, got)
		}
	}

	// The removal took the directory, and kept the rest.
	cloned, err := git.CloneContext(t.Context(), memory.NewStorage(), nil, &git.CloneOptions{URL: repo.URL})
	if err != nil {
		t.Fatal(err)
	}
	head, err := cloned.Head()
	if err != nil {
		t.Fatal(err)
	}
	c, err := cloned.CommitObject(head.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.File("a/x.yaml"); err == nil {
		t.Error("a/x.yaml still there after Remove")
	}
	if _, err := c.File("b.yaml"); err != nil {
		t.Errorf("b.yaml: %v", err)
	}
}

// TestGitFetchOwners checks that a server WithFetchOwners counts each
// fetch under the process that made it, here this test's own, and under
// no other; a listing of refs (ls-remote) is no fetch.
func TestGitFetchOwners(t *testing.T) {
	t.Parallel()
	srv := GitServer(t, WithFetchOwners())
	repo := srv.CreateRepo(t, "owners")
	repo.Commit(t, "first", map[string]string{"a.yaml": "a: 1\n"})
	rem := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{repo.URL}})
	if _, err := rem.ListContext(t.Context(), &git.ListOptions{}); err != nil {
		t.Fatalf("list: %v", err)
	}
	if n := srv.FetchesBy(os.Getpid()); n != 0 {
		t.Fatalf("a listing of refs counted as %d fetches", n)
	}
	for want := 1; want <= 2; want++ {
		repo.Commit(t, "next", map[string]string{"a.yaml": "a: next\n"})
		if err := rem.FetchContext(t.Context(), &git.FetchOptions{RefSpecs: []config.RefSpec{"+refs/heads/main:refs/heads/main"}}); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if n := srv.FetchesBy(os.Getpid()); n != want {
			t.Errorf("FetchesBy(this process) = %d after %d fetches", n, want)
		}
	}
	if n := srv.UnownedFetches(); n != 0 {
		t.Errorf("%d fetches tied to no process", n)
	}
}
