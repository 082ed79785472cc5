// Package source is the agent's fetch step: it brings the pinned commit of
// an application onto the agent's disk (or, for a Helm repository or OCI
// source, the pinned chart or artifact: see Fetch). A Cache keeps one bare Git
// repository per remote repository, shared by every application of that
// repository, fetches a commit only when it is missing (shallow, by its SHA,
// where the server allows), and materialises each commit's tree once into a
// directory the render step reads. The cache survives restarts and is
// bounded in size: the least recently used trees and repositories are
// evicted after each fetch.
//
// On disk, under the cache directory:
//
//	repos/<sha256 of the normalised URL>/git/             bare repository
//	repos/<sha256 of the normalised URL>/trees/<commit>/  one commit's files
//	trash/                                                 evicted, being deleted
//
// No URL text appears in a path. A tree directory is written under a
// temporary name and renamed into place when complete, so a directory under
// trees/ named for a commit is always a complete tree.
//
// Symbolic links in a tree are materialised as they are in Git, pointing
// wherever they point: refusing links that leave the tree is the job of
// whoever reads it (the render step opens files through an os.Root, which
// refuses them). A tree is a faithful copy; the reader decides.
package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"

	"github.com/drover-dev/drover/internal/gitremote"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	reposDir  = "repos"
	trashDir  = "trash"
	gitDir    = "git"
	treesDir  = "trees"
	urlFile   = "url"
	tmpPrefix = ".tmp-"
)

// Cache is an on-disk cache of Git repositories and checked-out commits. It
// is safe for concurrent use: Checkouts of one repository take turns (so a
// commit wanted by several applications is fetched once), Checkouts of
// different repositories run in parallel. One Cache owns its directory; two
// Caches, in one process or two, must not share one.
type Cache struct {
	dir      string
	maxBytes int64
	log      *slog.Logger

	// evictMu makes evictions take turns, so two do not both delete for the
	// same excess.
	evictMu sync.Mutex

	mu sync.Mutex // guards the fields below
	// repos holds the repositories some Checkout is using, by cache key.
	repos map[string]*repoEntry
	// treeUsers counts, by "key/commit", the Checkouts that may hand out or
	// have handed out that tree and not released it; eviction spares them.
	treeUsers map[string]int
	// sizeBytes caches the disk use of trees ("key/commit") and of bare
	// repositories ("key"); a repository's entry is dropped when a fetch
	// changes it. Trees never change.
	sizeBytes map[string]int64
}

// repoEntry is one repository in use.
type repoEntry struct {
	// lock holds a token while a Checkout reads or changes the repository
	// on disk.
	lock chan struct{}
	// users counts Checkouts waiting for lock, holding it, or not yet
	// released; guarded by Cache.mu. Eviction spares a repository with
	// users.
	users int
}

// NewCache returns a Cache in dir (created if needed) that keeps its disk
// use near maxBytes. What a previous Cache left in dir is reused.
func NewCache(dir string, maxBytes int64, log *slog.Logger) (*Cache, error) {
	if dir == "" {
		return nil, fmt.Errorf("source cache: dir must not be empty")
	}
	if maxBytes <= 0 {
		return nil, fmt.Errorf("source cache: maxBytes must be positive, got %d", maxBytes)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("source cache %s: %w", dir, err)
	}
	c := &Cache{
		dir:       abs,
		maxBytes:  maxBytes,
		log:       log,
		repos:     make(map[string]*repoEntry),
		treeUsers: make(map[string]int),
		sizeBytes: make(map[string]int64),
	}
	// Whatever a crash left half-deleted or half-written goes now, before
	// anything can be using it.
	if err := os.RemoveAll(filepath.Join(abs, trashDir)); err != nil {
		return nil, fmt.Errorf("source cache %s: %w", abs, err)
	}
	for _, d := range []string{reposDir, trashDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("source cache %s: %w", abs, err)
		}
	}
	keys, err := os.ReadDir(filepath.Join(abs, reposDir))
	if err != nil {
		return nil, fmt.Errorf("source cache %s: %w", abs, err)
	}
	for _, k := range keys {
		if err := removeTemps(filepath.Join(abs, reposDir, k.Name(), treesDir)); err != nil {
			return nil, fmt.Errorf("source cache %s: %w", abs, err)
		}
	}
	return c, nil
}

// Checkout makes commit of repoURL available as a directory and returns its
// path. The directory is shared with other Checkouts and must be treated as
// read-only; it stays in place until release is called (release is
// idempotent). commit must be a full 40-character SHA: the agent deploys
// pinned commits and never resolves refs. ref is the ref the hub resolved
// commit from (gitremote.CheckRef), or "" if it did not say; it only tells
// a fetch where to look when the server will not send the commit by its
// SHA.
//
// The commit is fetched only if the cache does not have it, and its tree
// is materialised only if no earlier Checkout did. Errors are *Error,
// classified by retry.IsTransient, and never contain credentials.
func (c *Cache) Checkout(ctx context.Context, repoURL string, creds *droverv1.RepoCredentials, commit, ref string) (dir string, release func(), err error) {
	r, err := gitremote.Parse(repoURL)
	if err != nil {
		return "", nil, newError("checkout", gitremote.Remote{Redacted: gitremote.RedactURL(repoURL)}, repoURL, err, nil)
	}
	gc := gitremote.Credentials{
		Username:      creds.GetUsername(),
		Password:      creds.GetPassword(),
		SSHPrivateKey: creds.GetSshPrivateKey(),
		SSHKnownHosts: creds.GetSshKnownHosts(),
	}
	scrubbed := r.Secrets(gc)
	sha, err := gitremote.CheckCommit(commit)
	if err != nil {
		return "", nil, newError("checkout", r, repoURL, err, scrubbed)
	}
	if ref != "" {
		if err := gitremote.CheckRef(ref); err != nil {
			return "", nil, newError("checkout", r, repoURL, err, scrubbed)
		}
	}
	auth, err := r.Auth(gc)
	if err != nil {
		return "", nil, newError("checkout", r, repoURL, err, scrubbed)
	}

	key := cacheKey(r.Key)
	e := c.acquire(key, sha)
	var once sync.Once
	release = func() { once.Do(func() { c.release(key, sha) }) }
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		release()
		return "", nil, newError("checkout", r, repoURL, ctx.Err(), nil)
	}
	dir, changed, err := c.checkoutLocked(ctx, r, repoURL, auth, scrubbed, key, sha, ref)
	<-e.lock
	if err != nil {
		release()
		return "", nil, err
	}
	if changed {
		c.evict(key, sha)
	}
	return dir, release, nil
}

// checkoutLocked does a Checkout's work while holding the repository's
// lock. changed reports whether the cache grew.
func (c *Cache) checkoutLocked(ctx context.Context, r gitremote.Remote, rawURL string, auth transport.AuthMethod, scrubbed []string, key, sha, ref string) (dir string, changed bool, err error) {
	repoDir := filepath.Join(c.dir, reposDir, key)
	treeDir := filepath.Join(repoDir, treesDir, sha)
	log := c.log.With("repo", r.Redacted, "commit", sha)
	if _, err := os.Stat(treeDir); err == nil {
		// Complete by construction: trees appear by rename.
		touch(repoDir, treeDir)
		log.Debug("source cache hit")
		return treeDir, false, nil
	}

	repo, err := c.openRepo(repoDir, r)
	if err != nil {
		return "", false, newError("checkout", r, rawURL, err, scrubbed)
	}
	hash := plumbing.NewHash(sha)
	if _, err := repo.CommitObject(hash); err != nil {
		start := time.Now()
		logErr := func(err error) string { return gitremote.Scrub(err.Error(), rawURL, r.Redacted, scrubbed) }
		got, err := fetch(ctx, repo, r, auth, hash, ref, log, logErr)
		c.forgetSize(key)
		if err != nil {
			return "", true, newError("fetch", r, rawURL, err, scrubbed)
		}
		log.Info("fetched commit", "via", got.via, "ref", got.ref, "depth", got.depth, "duration", time.Since(start).Round(time.Millisecond))
	}

	if err := materialise(repo, hash, treeDir); err != nil {
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			// The commit is here but not all of its objects: a fetch was
			// cut short or the disk lost data. Start the repository over
			// so the next attempt fetches afresh instead of failing the
			// same way forever.
			log.Warn("source cache repository incomplete, discarding it", "err", err)
			if rerr := os.RemoveAll(filepath.Join(repoDir, gitDir)); rerr != nil {
				log.Warn("discard source cache repository", "err", rerr)
			}
			c.forgetSize(key)
		}
		return "", true, newError("materialise", r, rawURL, err, scrubbed)
	}
	touch(repoDir, treeDir)
	return treeDir, true, nil
}

// openRepo opens the bare repository under repoDir, making it if it does not
// exist or is unreadable (a crash while it was being made).
func (c *Cache) openRepo(repoDir string, r gitremote.Remote) (*git.Repository, error) {
	p := filepath.Join(repoDir, gitDir)
	repo, err := git.PlainOpen(p)
	if err == nil {
		return repo, nil
	}
	if !errors.Is(err, git.ErrRepositoryNotExists) {
		c.log.Warn("source cache repository unreadable, making it anew", "repo", r.Redacted, "err", err)
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(repoDir, treesDir), 0o755); err != nil {
		return nil, err
	}
	// For people looking at the cache directory; nothing reads it.
	if err := os.WriteFile(filepath.Join(repoDir, urlFile), []byte(r.Redacted+"\n"), 0o644); err != nil {
		return nil, err
	}
	return git.PlainInit(p, true)
}

// How fetch found a commit, as the "via" of its log line.
const (
	viaSHA = "sha" // by its SHA, depth 1
	viaRef = "ref" // in the history of the ref the hub resolved it from
	viaAll = "all" // among every branch and tag, in full
)

// fetched says how fetch found a commit: via, the full ref name for viaRef,
// and the depth of the fetch that brought it (0 for the whole history).
type fetched struct {
	via   string
	ref   string
	depth int
}

// refDepths are the depths fetchRef asks for in turn while the commit is
// not in what came: the ref's tip, then a few, many, and all commits
// behind it. A commit pinned from the ref is usually its tip or close
// behind (a rollout holds clusters on the previous release); the last step
// is what git's --unshallow sends ("deepen 2^31-1").
var refDepths = []int{1, 10, 100, math.MaxInt32}

// fetch brings commit hash into repo and says how. In order:
//
//   - by its SHA with depth 1, where the server allows;
//   - through ref, the ref the hub resolved the commit from, if known:
//     fetchRef;
//   - every branch and tag in full, after which the commit must be among
//     them.
//
// go-git reports a server's refusal to send a SHA ("not our ref") as an
// untyped error, indistinguishable from a connection lost mid-fetch, so
// every failure that is not classified as permanent (authentication, host
// key, no such repository) or a cancellation moves on to the next way: a
// refusal then ends in ErrUnknownCommit if the commit is nowhere, and a
// network failure fails the last way as well, retryably. logErr renders an
// error for the log without credentials.
func fetch(ctx context.Context, repo *git.Repository, r gitremote.Remote, auth transport.AuthMethod, hash plumbing.Hash, ref string, log *slog.Logger, logErr func(error) string) (fetched, error) {
	rem := git.NewRemote(repo.Storer, &config.RemoteConfig{Name: "origin", URLs: []string{r.Dial}})
	sha := hash.String()
	got, err := fetched{via: viaSHA, depth: 1}, fetchSpecs(ctx, rem, auth, 1, config.RefSpec("+"+sha+":refs/drover/commits/"+sha))
	if err != nil {
		if !moveOn(ctx, err) {
			return fetched{}, err
		}
		log.Info("could not fetch the commit by its SHA", "ref", ref, "err", logErr(err))
		found := false
		if ref != "" {
			got, found, err = fetchRef(ctx, repo, rem, auth, hash, ref, log, logErr)
			if err != nil {
				return fetched{}, err
			}
		}
		if !found {
			log.Info("fetching all branches and tags", "ref", ref)
			got = fetched{via: viaAll}
			// A repository holding shallow commits must say so, or the
			// server takes their history as present and leaves it out of
			// the pack.
			depth := 0
			if shallows, err := repo.Storer.Shallow(); err == nil && len(shallows) > 0 {
				depth = math.MaxInt32
			}
			if err := fetchSpecs(ctx, rem, auth, depth, "+refs/heads/*:refs/drover/heads/*", "+refs/tags/*:refs/drover/tags/*"); err != nil {
				return fetched{}, err
			}
		}
	}
	if _, err := repo.CommitObject(hash); err != nil {
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			return fetched{}, fmt.Errorf("%w %s: the repository has no such commit", ErrUnknownCommit, sha)
		}
		return fetched{}, err
	}
	return got, nil
}

// fetchRef looks for commit hash in the history of ref: the ref's tip
// first, then deeper (refDepths) while the commit is not in what came and
// what came is cut short by the depth, which is what a ref that moved on
// since the commit was pinned looks like. A short name is tried as a
// branch, then as a tag (gitremote.FullRefNames). found is false, with no
// error, when the commit is not in the ref's history, the ref is not on
// the remote, or the server failed in a way the next way of fetching may
// not: fetch then fetches everything.
func fetchRef(ctx context.Context, repo *git.Repository, rem *git.Remote, auth transport.AuthMethod, hash plumbing.Hash, ref string, log *slog.Logger, logErr func(error) string) (got fetched, found bool, err error) {
names:
	for _, name := range gitremote.FullRefNames(ref) {
		local := "refs/drover/" + strings.TrimPrefix(name, "refs/")
		for _, depth := range refDepths {
			err := fetchSpecs(ctx, rem, auth, depth, config.RefSpec("+"+name+":"+local))
			if errors.Is(err, git.NoMatchingRefSpecError{}) {
				continue names // not on the remote under this name
			}
			if err != nil {
				if !moveOn(ctx, err) {
					return fetched{}, false, err
				}
				log.Info("could not fetch the ref", "ref", name, "depth", depth, "err", logErr(err))
				return fetched{}, false, nil
			}
			if _, err := repo.CommitObject(hash); err == nil {
				return fetched{via: viaRef, ref: name, depth: depth}, true, nil
			}
			// Without shallow commits the ref's whole history is here, and
			// the commit is not in it: deeper brings nothing.
			if shallows, err := repo.Storer.Shallow(); err != nil || len(shallows) == 0 {
				log.Info("the commit is not in the history of the ref", "ref", name)
				return fetched{}, false, nil
			}
		}
		log.Info("the commit is not in the history of the ref", "ref", name)
		return fetched{}, false, nil
	}
	log.Info("the remote has no such ref", "ref", ref)
	return fetched{}, false, nil
}

// fetchSpecs fetches specs from rem with depth (0: in full) and no tags
// but those the specs name. Already having everything is not an error.
func fetchSpecs(ctx context.Context, rem *git.Remote, auth transport.AuthMethod, depth int, specs ...config.RefSpec) error {
	err := rem.FetchContext(ctx, &git.FetchOptions{RefSpecs: specs, Depth: depth, Auth: auth, Tags: git.NoTags})
	if errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil
	}
	return err
}

// moveOn reports whether a fetch that failed with err should try the next
// way of fetching: not when retrying cannot help (authentication, host
// key, no such repository) nor when ctx is done.
func moveOn(ctx context.Context, err error) bool {
	_, retryable := classify(err)
	return retryable && ctx.Err() == nil
}

// materialise writes the tree of commit hash into dst, through a temporary
// directory renamed into place when complete.
func materialise(repo *git.Repository, hash plumbing.Hash, dst string) (err error) {
	commit, err := repo.CommitObject(hash)
	if err != nil {
		return err
	}
	tree, err := commit.Tree()
	if err != nil {
		return err
	}
	parent := filepath.Dir(dst)
	// Only a Checkout holding the repository's lock writes here, so any
	// temporary directory left is from a crash or a failed attempt.
	if err := removeTemps(parent); err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, tmpPrefix+hash.String()+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	// Writing through an os.Root keeps a hostile tree (entries named "..",
	// or a file path through a symlink) from writing outside tmp.
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer root.Close()
	err = tree.Files().ForEach(func(f *object.File) error {
		if !filepath.IsLocal(filepath.FromSlash(f.Name)) {
			// Git never makes such an entry; someone crafted it.
			return invalidf("commit %s: tree entry %q is not a path inside the tree", hash, f.Name)
		}
		if d := path.Dir(f.Name); d != "." {
			if err := root.MkdirAll(filepath.FromSlash(d), 0o755); err != nil {
				return err
			}
		}
		return writeEntry(root, f)
	})
	if err != nil {
		return err
	}
	if err := root.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func writeEntry(root *os.Root, f *object.File) (err error) {
	name := filepath.FromSlash(f.Name)
	perm := os.FileMode(0o644)
	switch f.Mode {
	case filemode.Symlink:
		target, err := f.Contents()
		if err != nil {
			return err
		}
		return root.Symlink(target, name)
	case filemode.Executable:
		perm = 0o755
	}
	src, err := f.Reader()
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(dst, src)
	return err
}

// removeTemps deletes the temporary tree directories in dir.
func removeTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// acquire registers a Checkout of commit in repository key, so eviction
// spares both until release.
func (c *Cache) acquire(key, commit string) *repoEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.repos[key]
	if e == nil {
		e = &repoEntry{lock: make(chan struct{}, 1)}
		c.repos[key] = e
	}
	e.users++
	c.treeUsers[key+"/"+commit]++
	return e
}

func (c *Cache) release(key, commit string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.repos[key]; e != nil {
		e.users--
		if e.users == 0 {
			// Nobody holds or waits for its lock: the next Checkout may
			// start with a new entry.
			delete(c.repos, key)
		}
	}
	id := key + "/" + commit
	c.treeUsers[id]--
	if c.treeUsers[id] <= 0 {
		delete(c.treeUsers, id)
	}
}

func (c *Cache) forgetSize(key string) {
	c.mu.Lock()
	delete(c.sizeBytes, key)
	c.mu.Unlock()
}

// unit is what eviction removes at once: one tree, or one repository with
// all its trees.
type unit struct {
	key    string
	commit string // empty for a repository
	path   string
	used   time.Time
	size   int64 // for a repository, its bare repository only
}

// evict removes least recently used trees and repositories until the cache
// fits maxBytes again. It spares the tree just checked out (keepKey,
// keepCommit) and its repository, and everything some Checkout still uses;
// if that alone is over the limit, the cache stays over it.
func (c *Cache) evict(keepKey, keepCommit string) {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	units, total, err := c.inventory()
	if err != nil {
		c.log.Warn("source cache: cannot measure disk use; not evicting", "err", err)
		return
	}
	if total <= c.maxBytes {
		return
	}
	// Oldest first; on a tie a tree goes before the repository it belongs
	// to, which is touched whenever one of its trees is.
	slices.SortStableFunc(units, func(a, b unit) int {
		if n := a.used.Compare(b.used); n != 0 {
			return n
		}
		switch {
		case a.commit != "" && b.commit == "":
			return -1
		case a.commit == "" && b.commit != "":
			return 1
		}
		return 0
	})
	treesLeft := make(map[string]int64) // by key: bytes of its trees not evicted
	for _, u := range units {
		if u.commit != "" {
			treesLeft[u.key] += u.size
		}
	}

	var trash []string
	c.mu.Lock()
	for _, u := range units {
		if total <= c.maxBytes {
			break
		}
		if u.key == keepKey && (u.commit == "" || u.commit == keepCommit) {
			continue
		}
		size := u.size
		if u.commit != "" {
			if c.treeUsers[u.key+"/"+u.commit] > 0 || treesLeft[u.key] < 0 {
				continue
			}
		} else {
			if e := c.repos[u.key]; e != nil && e.users > 0 {
				continue
			}
			size += treesLeft[u.key]
		}
		dst, err := os.MkdirTemp(filepath.Join(c.dir, trashDir), "")
		if err == nil {
			// Renamed under c.mu, so no Checkout can start using it
			// between the checks above and its disappearance.
			err = os.Rename(u.path, filepath.Join(dst, "x"))
		}
		if err != nil {
			c.log.Warn("source cache: evict", "path", u.path, "err", err)
			continue
		}
		trash = append(trash, dst)
		total -= size
		if u.commit != "" {
			treesLeft[u.key] -= u.size
			delete(c.sizeBytes, u.key+"/"+u.commit)
		} else {
			// Its trees went with it; mark them so they are not counted
			// or moved again.
			treesLeft[u.key] = -1
			for id := range c.sizeBytes {
				if id == u.key || strings.HasPrefix(id, u.key+"/") {
					delete(c.sizeBytes, id)
				}
			}
		}
		c.log.Info("source cache: evicted", "path", strings.TrimPrefix(u.path, c.dir+string(filepath.Separator)), "sizeBytes", size)
	}
	c.mu.Unlock()
	for _, d := range trash {
		if err := os.RemoveAll(d); err != nil {
			c.log.Warn("source cache: delete evicted", "path", d, "err", err)
		}
	}
	if total > c.maxBytes {
		c.log.Warn("source cache over its limit; what remains is in use", "sizeBytes", total, "maxBytes", c.maxBytes)
	}
}

// inventory lists the cache's trees and repositories with their last use
// (their directories' modification times, which Checkout touches) and
// sizes, and returns the total size.
func (c *Cache) inventory() (units []unit, total int64, err error) {
	keys, err := os.ReadDir(filepath.Join(c.dir, reposDir))
	if err != nil {
		return nil, 0, err
	}
	for _, k := range keys {
		key := k.Name()
		repoDir := filepath.Join(c.dir, reposDir, key)
		info, err := os.Stat(repoDir)
		if err != nil {
			continue // evicted meanwhile
		}
		size, err := c.size(key, filepath.Join(repoDir, gitDir))
		if err != nil {
			return nil, 0, err
		}
		units = append(units, unit{key: key, path: repoDir, used: info.ModTime(), size: size})
		total += size
		trees, err := os.ReadDir(filepath.Join(repoDir, treesDir))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, 0, err
		}
		for _, t := range trees {
			if strings.HasPrefix(t.Name(), tmpPrefix) {
				continue
			}
			p := filepath.Join(repoDir, treesDir, t.Name())
			info, err := os.Stat(p)
			if err != nil {
				continue
			}
			size, err := c.size(key+"/"+t.Name(), p)
			if err != nil {
				return nil, 0, err
			}
			units = append(units, unit{key: key, commit: t.Name(), path: p, used: info.ModTime(), size: size})
			total += size
		}
	}
	return units, total, nil
}

// size returns the bytes of the files under p, from the cache when known.
func (c *Cache) size(id, p string) (int64, error) {
	c.mu.Lock()
	n, ok := c.sizeBytes[id]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	err := filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.sizeBytes[id] = n
	c.mu.Unlock()
	return n, nil
}

// touch marks paths as used now, for eviction's least-recently-used order,
// which survives restarts because it is on disk.
func touch(paths ...string) {
	now := time.Now()
	for _, p := range paths {
		_ = os.Chtimes(p, now, now)
	}
}

func cacheKey(normalized string) string {
	sum := sha256.Sum256([]byte(normalized))
	return hex.EncodeToString(sum[:])
}
