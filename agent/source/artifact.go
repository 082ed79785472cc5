package source

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Fetch makes an application's pinned content available as a directory,
// as Checkout does for a Git commit: for a Helm repository source the
// chart archive of the pinned version, for an OCI source the artifact the
// pinned manifest digest names, each verified against the digest the hub
// pinned and unpacked (a chart at the directory's root). The directory is
// shared and read-only, and stays until release is called.
//
// Artifacts live beside Git trees: under repos/<key>/trees/<digest hex>,
// where key hashes the source type, the normalised URL and the chart, so
// they are written (temporary directory, then rename) and evicted exactly
// as trees are. Content that does not match its digest fails only this
// call, with an *artifact.DigestMismatchError inside the *Error, marked
// transient: the fetch backs off and retries like any other.
func (c *Cache) Fetch(ctx context.Context, aa *droverv1.AppAssignment) (dir string, release func(), err error) {
	switch aa.GetSourceType() {
	case droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED, droverv1.SourceType_SOURCE_TYPE_GIT:
		return c.Checkout(ctx, aa.GetRepoUrl(), aa.GetCredentials(), aa.GetCommit(), aa.GetRef())
	case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY, droverv1.SourceType_SOURCE_TYPE_OCI:
		return c.fetchArtifact(ctx, aa)
	}
	return "", nil, &Error{Op: "fetch", URL: gitremote.RedactURL(aa.GetRepoUrl()),
		Err: retry.Permanent(invalidf("unknown source type %d", aa.GetSourceType()))}
}

func (c *Cache) fetchArtifact(ctx context.Context, aa *droverv1.AppAssignment) (string, func(), error) {
	redacted := gitremote.RedactURL(aa.GetRepoUrl())
	fail := func(op string, err error) (string, func(), error) {
		return "", nil, &Error{Op: op, URL: redacted, Err: err}
	}
	rev, err := artifact.ParseRevision(aa.GetCommit())
	if err != nil {
		return fail("fetch", err)
	}
	creds := aa.GetCredentials()
	if creds.GetSshPrivateKey() != "" {
		return fail("fetch", retry.Permanent(invalidf("credentials: an SSH key is given for a Helm repository or OCI registry")))
	}
	acc := artifact.Access{Username: creds.GetUsername(), Password: creds.GetPassword(), CAPEM: []byte(creds.GetCaPem()), Insecure: aa.GetInsecure()}
	id := aa.GetSourceType().String() + " " + gitremote.NormalizeURL(aa.GetRepoUrl())
	if aa.GetSourceType() == droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY {
		if aa.GetChart() == "" {
			return fail("fetch", retry.Permanent(invalidf("chart: empty for a Helm repository source")))
		}
		id += " " + aa.GetChart()
	}
	key, tree := cacheKey(id), rev.Hex()

	e := c.acquire(key, tree)
	var once sync.Once
	release := func() { once.Do(func() { c.release(key, tree) }) }
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		release()
		// Cancellation says nothing about the source.
		return fail("fetch", retry.Transient(ctx.Err()))
	}
	dir, changed, err := c.fetchArtifactLocked(ctx, aa, acc, rev, key, redacted)
	<-e.lock
	if err != nil {
		release()
		return "", nil, err
	}
	if changed {
		c.evict(key, tree)
	}
	return dir, release, nil
}

// fetchArtifactLocked does fetchArtifact's work while holding the key's
// lock. changed reports whether the cache grew.
func (c *Cache) fetchArtifactLocked(ctx context.Context, aa *droverv1.AppAssignment, acc artifact.Access, rev artifact.Revision, key, redacted string) (string, bool, error) {
	repoDir := filepath.Join(c.dir, reposDir, key)
	treeDir := filepath.Join(repoDir, treesDir, rev.Hex())
	log := c.log.With("repo", redacted, "commit", rev.String())
	if _, err := os.Stat(treeDir); err == nil {
		touch(repoDir, treeDir)
		log.Debug("source cache hit")
		return treeDir, false, nil
	}
	start := time.Now()
	var archive []byte
	var strip bool
	switch aa.GetSourceType() {
	case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY:
		body, err := artifact.FetchChart(ctx, aa.GetRepoUrl(), aa.GetChart(), rev, acc)
		if err != nil {
			return "", false, &Error{Op: "fetch", URL: redacted, Err: err}
		}
		archive, strip = body, true
	default:
		repo, err := artifact.OpenOCI(aa.GetRepoUrl(), acc)
		if err != nil {
			return "", false, &Error{Op: "fetch", URL: redacted, Err: err}
		}
		pulled, err := repo.Pull(ctx, rev)
		repo.Close()
		if err != nil {
			return "", false, &Error{Op: "fetch", URL: redacted, Err: err}
		}
		archive, strip = pulled.Layer, pulled.Helm
	}
	if err := unpack(archive, repoDir, treeDir, redacted, strip); err != nil {
		return "", true, &Error{Op: "materialise", URL: redacted, Err: err}
	}
	touch(repoDir, treeDir)
	log.Info("fetched artifact", "sizeBytes", len(archive), "duration", time.Since(start).Round(time.Millisecond))
	return treeDir, true, nil
}

// unpack extracts a verified archive into dst through a temporary
// directory renamed into place when complete.
func unpack(archive []byte, repoDir, dst, redacted string, strip bool) (err error) {
	parent := filepath.Dir(dst)
	if err := removeTemps(parent); err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	// For people looking at the cache directory; nothing reads it.
	if err := os.WriteFile(filepath.Join(repoDir, urlFile), []byte(redacted+"\n"), 0o644); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, tmpPrefix+filepath.Base(dst)+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := artifact.ExtractTarGz(bytes.NewReader(archive), tmp, artifact.ExtractOptions{StripTopDir: strip}); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
