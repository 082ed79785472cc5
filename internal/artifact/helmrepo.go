package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Size limits on what is read from a Helm repository or OCI registry.
const (
	// MaxIndexBytes bounds a Helm repository's index.yaml. Large public
	// repositories' indexes are a few MiB; 32 MiB leaves room and still
	// bounds the hub's memory per poll.
	MaxIndexBytes = 32 << 20
	// MaxArchiveBytes bounds a chart archive or an OCI layer, compressed.
	MaxArchiveBytes = 64 << 20
	// MaxManifestBytes bounds an OCI manifest.
	MaxManifestBytes = 4 << 20
)

// Index is a Helm repository's index.yaml.
type Index struct {
	url      *url.URL // the repository, as its source spells it
	redacted string
	file     *indexFile
}

// indexFile is the part of Helm's index.yaml format (helm.sh/helm's
// repo.IndexFile) that resolving and fetching read. Helm's own repo package
// is not used: importing it brings Helm's plugin runtime (a WebAssembly
// engine, some 800 packages) into the hub, the agent and droverctl.
type indexFile struct {
	APIVersion string              `json:"apiVersion"`
	Entries    map[string][]*Entry `json:"entries"`
}

// Entry is one chart version of an index (Helm's repo.ChartVersion, the
// fields Drover reads).
type Entry struct {
	Name    string   `json:"name"`
	Version string   `json:"version"`
	URLs    []string `json:"urls"`
	// Digest is the archive's SHA-256, hex, as `helm repo index` writes it.
	Digest string `json:"digest"`
}

// FetchIndex downloads and parses repoURL's index.yaml. One Index serves
// every chart of the repository, so the hub fetches it once per poll.
func FetchIndex(ctx context.Context, repoURL string, acc Access) (*Index, error) {
	base, err := acc.checkHTTPURL(repoURL)
	if err != nil {
		return nil, err
	}
	red := gitremote.RedactURL(repoURL)
	indexURL := resolveReference(base, "index.yaml")
	body, err := acc.get(ctx, indexURL, "index.yaml", red, MaxIndexBytes)
	if err != nil {
		return nil, err
	}
	var f indexFile
	// Not strict, unlike Helm: fields a newer Helm adds must not make an
	// index unreadable. (sigs.k8s.io/yaml reads JSON indexes too.)
	if err := yaml.Unmarshal(body, &f); err != nil {
		return nil, retry.Permanent(fmt.Errorf("index.yaml from %s: %w: not a Helm repository index: %v", red, ErrInvalid, err))
	}
	if f.APIVersion == "" {
		return nil, invalidf("index.yaml from %s has no apiVersion: not a Helm repository index", red)
	}
	for name, versions := range f.Entries {
		kept := versions[:0]
		for _, v := range versions {
			if v != nil && v.Version != "" {
				kept = append(kept, v)
			}
		}
		f.Entries[name] = kept
	}
	return &Index{url: base, redacted: red, file: &f}, nil
}

// Find returns the version of chart that constraint picks: an exact
// version, or the highest satisfying a semver range, or for "" the highest
// without a pre-release. No match is a *NoVersionError.
func (ix *Index) Find(chart, constraint string) (*Entry, error) {
	entries := ix.file.Entries[chart]
	if len(entries) == 0 {
		return nil, retry.Permanent(fmt.Errorf("%w: chart %s is not in %s", ErrNotFound, chart, ix.redacted))
	}
	versions := make([]string, len(entries))
	for i, e := range entries {
		versions[i] = e.Version
	}
	chosen, highest, err := pick(versions, constraint)
	if err != nil {
		return nil, err
	}
	if chosen == "" {
		c := constraint
		if c == "" {
			c = "any version without a pre-release"
		}
		return nil, retry.Permanent(&NoVersionError{Name: chart, URL: ix.redacted, Constraint: c, Highest: highest})
	}
	for _, e := range entries {
		if e.Version == chosen {
			return e, nil
		}
	}
	panic("unreachable: pick chose a version it was not given")
}

// chartURL returns where e's archive is: its first URL, resolved against
// the repository's URL when relative.
func (ix *Index) chartURL(e *Entry) (string, error) {
	if len(e.URLs) == 0 {
		return "", invalidf("chart %s %s in %s lists no URL", e.Name, e.Version, ix.redacted)
	}
	ref, err := url.Parse(e.URLs[0])
	if err != nil {
		return "", invalidf("chart %s %s in %s: URL %q: %v", e.Name, e.Version, ix.redacted, gitremote.RedactURL(e.URLs[0]), err)
	}
	return resolveReference(ix.url, ref.String()), nil
}

// resolveReference resolves ref against the repository URL base as Helm
// does (repo.ResolveReferenceURL): base is taken as a directory, and keeps
// its query (some repositories sign URLs with it).
func resolveReference(base *url.URL, ref string) string {
	r, err := url.Parse(ref)
	if err == nil && r.IsAbs() {
		return ref
	}
	b := *base
	b.Path = strings.TrimSuffix(b.Path, "/") + "/"
	b.RawPath = ""
	out := b.ResolveReference(r)
	out.RawQuery = base.RawQuery
	return out.String()
}

// Resolve pins chart at the version constraint picks: the version and the
// SHA-256 of its archive, from the index's digest, or, when the index has
// none, by downloading the archive once and hashing it.
func (ix *Index) Resolve(ctx context.Context, chart, constraint string, acc Access) (Revision, error) {
	e, err := ix.Find(chart, constraint)
	if err != nil {
		return Revision{}, err
	}
	if d := strings.ToLower(e.Digest); d != "" {
		return newRevision(e.Version, "sha256:"+strings.TrimPrefix(d, "sha256:"))
	}
	body, _, err := ix.download(ctx, e, acc)
	if err != nil {
		return Revision{}, err
	}
	return newRevision(e.Version, digestOf(body))
}

// FetchChart downloads the archive of chart at rev.Version from repoURL
// (finding its URL in the index) and returns it if its SHA-256 is
// rev.Digest; otherwise the error is a *DigestMismatchError.
func FetchChart(ctx context.Context, repoURL, chart string, rev Revision, acc Access) ([]byte, error) {
	if err := checkDigest(rev.Digest); err != nil {
		return nil, err
	}
	ix, err := FetchIndex(ctx, repoURL, acc)
	if err != nil {
		return nil, err
	}
	e, err := ix.Find(chart, rev.Version)
	if err != nil {
		return nil, err
	}
	if e.Version != rev.Version {
		return nil, retry.Permanent(fmt.Errorf("%w: chart %s version %s is not in %s", ErrNotFound, chart, rev.Version, ix.redacted))
	}
	return ix.fetchVerified(ctx, e, rev, acc)
}

func (ix *Index) fetchVerified(ctx context.Context, e *Entry, rev Revision, acc Access) ([]byte, error) {
	body, where, err := ix.download(ctx, e, acc)
	if err != nil {
		return nil, err
	}
	if got := digestOf(body); got != rev.Digest {
		name := path.Base(where.Path)
		return nil, retry.Transient(&DigestMismatchError{What: "chart " + name, URL: gitremote.RedactURL(where.String()), Got: got, Want: rev.Digest})
	}
	return body, nil
}

// download fetches e's archive. Credentials go only to the repository's
// own scheme and host; an archive elsewhere is fetched anonymously.
func (ix *Index) download(ctx context.Context, e *Entry, acc Access) ([]byte, *url.URL, error) {
	raw, err := ix.chartURL(e)
	if err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, nil, invalidf("chart %s %s in %s: bad URL: %v", e.Name, e.Version, ix.redacted, err)
	}
	chartAcc := acc
	if !sameOrigin(u, ix.url) {
		chartAcc.Username, chartAcc.Password = "", ""
	}
	if _, err := chartAcc.checkHTTPURL(raw); err != nil {
		return nil, nil, fmt.Errorf("chart %s %s in %s: %w", e.Name, e.Version, ix.redacted, err)
	}
	body, err := chartAcc.get(ctx, raw, "chart "+path.Base(u.Path), gitremote.RedactURL(raw), MaxArchiveBytes)
	return body, u, err
}

// get fetches raw with acc's credentials (the caller decided they may go to
// raw's host) and returns at most limit bytes; more is ErrTooLarge.
func (acc Access) get(ctx context.Context, raw, what, redacted string, limit int64) ([]byte, error) {
	client, tr, err := acc.httpClient()
	if err != nil {
		return nil, err
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return nil, invalidf("%s: %v", redacted, err)
	}
	if acc.hasCredentials() {
		req.SetBasicAuth(acc.Username, acc.Password)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, transportError(what, redacted, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(what, redacted, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, transportError(what, redacted, err)
	}
	if int64(len(body)) > limit {
		return nil, retry.Permanent(fmt.Errorf("%s from %s: %w: more than %d MiB", what, redacted, ErrTooLarge, limit>>20))
	}
	return body, nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
