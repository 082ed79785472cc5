package gitwatch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/drover-dev/drover/internal/gitremote"
)

const (
	// maxCachedRepos bounds the repositories kept in the cache directory;
	// the least recently used one beyond it is removed.
	maxCachedRepos = 32
	// maxCachedCommits bounds the commits fetched into one cached
	// repository. go-git cannot drop unreachable objects cheaply, so a
	// repository past the bound is removed whole and refilled on next use:
	// with shallow fetches that costs two trees.
	maxCachedCommits = 64
	// fallbackDepth is how much branch history is fetched from a server
	// that refuses to send a commit by SHA.
	fallbackDepth = 50
	// cacheRefPrefix namespaces the refs that keep fetched commits.
	cacheRefPrefix = "refs/drover/"
)

// PathsChanged reports whether anything under paths differs between commits
// from and to of repoURL. A path is a file or a directory relative to the
// repository root ("" or "." is the whole tree); it changed if its content
// or mode differs, or it exists in only one of the commits. A path missing
// from both has not changed. from and to are full commit SHAs.
//
// The commits are fetched shallow (depth 1) by SHA into the Resolver's
// cache, so comparing a release with the previous one costs at most two
// trees. A server that refuses fetch by SHA (no
// uploadpack.allowReachableSHA1InWant) gets a fetch of its branches, depth
// 50, instead.
func (r *Resolver) PathsChanged(ctx context.Context, repoURL string, auth Credentials, from, to string, paths []string) (bool, error) {
	fail := func(err error) (bool, error) {
		return false, fmt.Errorf("compare %s: %w", RedactURL(repoURL), err)
	}
	rem, am, err := prepare(repoURL, auth)
	if err != nil {
		return fail(err)
	}
	fromHash, err := commitArg("from", from)
	if err != nil {
		return fail(err)
	}
	toHash, err := commitArg("to", to)
	if err != nil {
		return fail(err)
	}
	if len(paths) == 0 {
		return fail(invalidf("paths: at least one path is required"))
	}
	clean := make([]string, len(paths))
	for i, p := range paths {
		if clean[i], err = cleanPath(p); err != nil {
			return fail(invalidf("paths[%d] %q: %v", i, p, err))
		}
	}
	if fromHash == toHash {
		return false, nil
	}

	var changed bool
	err = r.cache.with(ctx, NormalizeURL(repoURL), func(repo *git.Repository) error {
		if err := r.fetchCommits(ctx, repo, rem, repoURL, am, auth, fromHash, toHash); err != nil {
			return err
		}
		differ, err := treesDiffer(repo, fromHash, toHash, clean)
		changed = differ
		return err
	})
	if err != nil {
		var re *remoteError
		if errors.As(err, &re) {
			// Already names the repository.
			return false, err
		}
		return fail(err)
	}
	return changed, nil
}

func commitArg(field, sha string) (plumbing.Hash, error) {
	commit, err := gitremote.CheckCommit(sha)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("%s: %w", field, err)
	}
	return plumbing.NewHash(commit), nil
}

// cleanPath makes p relative to the repository root: "/apps/web/", "./apps/web"
// and "apps//web" are "apps/web"; "", "." and "/" are "" (the root). A path
// that climbs out of the repository is refused.
func cleanPath(p string) (string, error) {
	if strings.ContainsAny(p, "\\\x00") {
		return "", errors.New("must use / as the separator and contain no NUL")
	}
	c := path.Clean(strings.TrimLeft(p, "/"))
	switch {
	case c == ".":
		return "", nil
	case c == ".." || strings.HasPrefix(c, "../"):
		return "", errors.New("must stay inside the repository")
	}
	for _, part := range strings.Split(c, "/") {
		if part == ".git" {
			return "", errors.New("must not name .git")
		}
	}
	return c, nil
}

// fetchCommits makes sure both commits are in repo, fetching the missing
// ones in one shallow fetch.
func (r *Resolver) fetchCommits(ctx context.Context, repo *git.Repository, rem gitremote.Remote, rawURL string, am transport.AuthMethod, auth Credentials, commits ...plumbing.Hash) error {
	var specs []config.RefSpec
	for _, h := range commits {
		if !hasCommit(repo, h) {
			specs = append(specs, config.RefSpec(h.String()+":"+cacheRefPrefix+h.String()))
		}
	}
	if len(specs) == 0 {
		return nil
	}
	origin := git.NewRemote(repo.Storer, &config.RemoteConfig{Name: "origin", URLs: []string{rem.Dial}})
	err := origin.FetchContext(ctx, &git.FetchOptions{RefSpecs: specs, Depth: 1, Auth: am, Tags: git.NoTags})
	if errors.Is(err, git.ErrExactSHA1NotSupported) {
		r.log.InfoContext(ctx, "git server refuses fetch by commit SHA; fetching its branches instead",
			"repo", rem.Redacted, "depth", fallbackDepth)
		err = origin.FetchContext(ctx, &git.FetchOptions{
			RefSpecs: []config.RefSpec{config.RefSpec("+refs/heads/*:" + cacheRefPrefix + "heads/*")},
			Depth:    fallbackDepth,
			Auth:     am,
			Tags:     git.NoTags,
			Force:    true,
		})
	}
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return wrapRemote("compare", rem, rawURL, err, rem.Secrets(auth))
	}
	for _, h := range commits {
		if !hasCommit(repo, h) {
			return fmt.Errorf("%w: %s", ErrCommitNotFound, h)
		}
	}
	return nil
}

func hasCommit(repo *git.Repository, h plumbing.Hash) bool {
	_, err := repo.CommitObject(h)
	return err == nil
}

// treesDiffer compares paths between two commits already in repo.
func treesDiffer(repo *git.Repository, from, to plumbing.Hash, paths []string) (bool, error) {
	fromTree, err := commitTree(repo, from)
	if err != nil {
		return false, err
	}
	toTree, err := commitTree(repo, to)
	if err != nil {
		return false, err
	}
	for _, p := range paths {
		a, err := lookupPath(repo, fromTree, p)
		if err != nil {
			return false, fmt.Errorf("%s at %s: %w", p, from, err)
		}
		b, err := lookupPath(repo, toTree, p)
		if err != nil {
			return false, fmt.Errorf("%s at %s: %w", p, to, err)
		}
		if a != b {
			return true, nil
		}
	}
	return false, nil
}

func commitTree(repo *git.Repository, h plumbing.Hash) (*object.Tree, error) {
	c, err := repo.CommitObject(h)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", h, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of commit %s: %w", h, err)
	}
	return t, nil
}

// treeEntry is what a path is in one tree; the zero value means absent.
type treeEntry struct {
	hash plumbing.Hash
	mode filemode.FileMode
}

// lookupPath walks p from root. A path through a file ("a/b" where "a" is a
// file) is absent, not an error: one commit may have a file where the other
// has a directory.
func lookupPath(repo *git.Repository, root *object.Tree, p string) (treeEntry, error) {
	if p == "" {
		return treeEntry{hash: root.Hash, mode: filemode.Dir}, nil
	}
	tree := root
	parts := strings.Split(p, "/")
	for i, name := range parts {
		var found *object.TreeEntry
		for j := range tree.Entries {
			if tree.Entries[j].Name == name {
				found = &tree.Entries[j]
				break
			}
		}
		if found == nil {
			return treeEntry{}, nil
		}
		if i == len(parts)-1 {
			return treeEntry{hash: found.Hash, mode: found.Mode}, nil
		}
		if found.Mode != filemode.Dir {
			return treeEntry{}, nil
		}
		next, err := repo.TreeObject(found.Hash)
		if err != nil {
			return treeEntry{}, err
		}
		tree = next
	}
	return treeEntry{}, nil
}

// commitCache holds one bare, shallow repository per remote under dir, named
// by a hash of the remote's normalised URL. Uses of one repository are
// serialised; go-git's on-disk storage is not safe for concurrent writers.
type commitCache struct {
	dir        string
	maxRepos   int
	maxCommits int
	locks      keyedMutex
}

func newCommitCache(dir string) *commitCache {
	return &commitCache{dir: dir, maxRepos: maxCachedRepos, maxCommits: maxCachedCommits}
}

// with runs fn on the cached repository of key. Without a cache directory
// fn gets a fresh in-memory repository.
func (c *commitCache) with(ctx context.Context, key string, fn func(*git.Repository) error) error {
	if c.dir == "" {
		repo, err := git.Init(memory.NewStorage(), nil)
		if err != nil {
			return err
		}
		return fn(repo)
	}
	sum := sha256.Sum256([]byte(key))
	name := hex.EncodeToString(sum[:16])
	unlock, err := c.locks.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()

	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("git cache: %w", err)
	}
	dir := filepath.Join(c.dir, name)
	repo, err := openOrInit(dir)
	if err != nil {
		return fmt.Errorf("git cache: %w", err)
	}
	now := time.Now()
	_ = os.Chtimes(dir, now, now) // the eviction order; best effort
	c.evict(name)

	err = fn(repo)
	if err == nil && countCacheRefs(repo) > c.maxCommits {
		_ = os.RemoveAll(dir)
	}
	return err
}

// openOrInit opens the bare repository in dir, starting over if it is
// missing or unreadable (a hub killed mid-fetch can leave it half written).
func openOrInit(dir string) (*git.Repository, error) {
	repo, err := git.PlainOpen(dir)
	if err == nil {
		return repo, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	return git.PlainInit(dir, true)
}

// evict removes the least recently used repositories beyond maxRepos,
// skipping any in use.
func (c *commitCache) evict(keep string) {
	entries, err := os.ReadDir(c.dir)
	if err != nil || len(entries) <= c.maxRepos {
		return
	}
	type aged struct {
		name string
		mod  time.Time
	}
	var dirs []aged
	for _, e := range entries {
		if !e.IsDir() || e.Name() == keep {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		dirs = append(dirs, aged{e.Name(), info.ModTime()})
	}
	sort.Slice(dirs, func(i, j int) bool { return dirs[i].mod.Before(dirs[j].mod) })
	for excess := len(entries) - c.maxRepos; excess > 0 && len(dirs) > 0; dirs = dirs[1:] {
		unlock, ok := c.locks.TryLock(dirs[0].name)
		if !ok {
			continue
		}
		if os.RemoveAll(filepath.Join(c.dir, dirs[0].name)) == nil {
			excess--
		}
		unlock()
	}
}

func countCacheRefs(repo *git.Repository) int {
	refs, err := repo.References()
	if err != nil {
		return 0
	}
	defer refs.Close()
	n := 0
	_ = refs.ForEach(func(ref *plumbing.Reference) error {
		if strings.HasPrefix(ref.Name().String(), cacheRefPrefix) {
			n++
		}
		return nil
	})
	return n
}
