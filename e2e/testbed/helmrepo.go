package testbed

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/provenance"
	repo "helm.sh/helm/v4/pkg/repo/v1"

	"github.com/drover-dev/drover/internal/testlog"
)

// HelmRepo is a Helm chart repository: index.yaml and chart archives
// served from a directory over HTTPS on 127.0.0.1, with a certificate of
// a CA made for it (or plain HTTP with HelmRepoPlainHTTP).
type HelmRepo struct {
	// URL is the repository's URL with a trailing slash,
	// https://127.0.0.1:PORT/; index.yaml is at URL + "index.yaml".
	URL string
	// CAPEM is the CA that signed its certificate; nil over plain HTTP.
	CAPEM []byte

	dir      string // what is served
	relative bool   // index URLs relative to the index, with HelmRepoRelativeURLs

	mu       sync.Mutex // guards the fields below; one Add or Tamper at a time
	index    *repo.IndexFile
	requests map[string]int // by URL path
}

// HelmRepoOption configures StartHelmRepo.
type HelmRepoOption func(*helmRepoConfig)

type helmRepoConfig struct {
	user, password      string
	plainHTTP, relative bool
}

// HelmRepoBasicAuth makes the repository answer 401 to every request
// without these basic-auth credentials.
func HelmRepoBasicAuth(user, password string) HelmRepoOption {
	return func(c *helmRepoConfig) { c.user, c.password = user, password }
}

// HelmRepoPlainHTTP serves the repository over plain HTTP, as some
// in-cluster repositories are; Drover takes one only with insecure: true.
func HelmRepoPlainHTTP() HelmRepoOption {
	return func(c *helmRepoConfig) { c.plainHTTP = true }
}

// HelmRepoRelativeURLs makes index.yaml give each chart's URL relative to
// the index ("demo-0.1.0.tgz"), as `helm repo index` does without --url;
// without it they are absolute.
func HelmRepoRelativeURLs() HelmRepoOption {
	return func(c *helmRepoConfig) { c.relative = true }
}

// StartHelmRepo starts an empty chart repository for t (its index.yaml
// lists no charts), closed when t ends.
func StartHelmRepo(t testing.TB, opts ...HelmRepoOption) *HelmRepo {
	t.Helper()
	var cfg helmRepoConfig
	for _, o := range opts {
		o(&cfg)
	}
	h := &HelmRepo{dir: t.TempDir(), relative: cfg.relative, index: repo.NewIndexFile(), requests: map[string]int{}}
	var handler http.Handler = http.FileServer(http.Dir(h.dir))
	if cfg.user != "" || cfg.password != "" {
		handler = basicAuth(cfg.user, cfg.password, handler)
	}
	srv := httptest.NewUnstartedServer(h.count(handler))
	// TLS handshakes refused by clients that do not trust the CA are the
	// server's to log; they belong with the test, not on stderr.
	srv.Config.ErrorLog = slog.NewLogLogger(testlog.New(t).With("component", "helm-repository").Handler(), slog.LevelWarn)
	if cfg.plainHTTP {
		srv.Start()
	} else {
		pki, err := newServingPKI("helm-repository")
		if err != nil {
			t.Fatalf("testbed: Helm repository: %v", err)
		}
		cert, err := tls.X509KeyPair(pki.serverCert, pki.serverKey)
		if err != nil {
			t.Fatalf("testbed: Helm repository: %v", err)
		}
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		srv.StartTLS()
		h.CAPEM = pki.caCert
	}
	t.Cleanup(srv.Close)
	h.URL = srv.URL + "/"
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writeIndex(t)
	return h
}

// Requests is how many requests the server has had for path (e.g.
// "/index.yaml", "/NAME-VERSION.tgz"), refused ones included.
func (h *HelmRepo) Requests(path string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests[path]
}

func (h *HelmRepo) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.requests[r.URL.Path]++
		h.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// Add packages the chart in files with the Helm SDK into the repository
// as NAME-VERSION.tgz and adds it to index.yaml, with its SHA-256 as the
// digest and its absolute URL, as `helm repo index --url` writes them
// (relative with HelmRepoRelativeURLs). It returns the chart's version.
// Adding a version the index has fails t.
func (h *HelmRepo) Add(t testing.TB, files map[string]string) string {
	t.Helper()
	tgz := PackageChart(t, files)
	meta := chartMetadata(t, tgz)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.index.Has(meta.Name, meta.Version) {
		t.Fatalf("testbed: Helm repository: chart %s %s is there already", meta.Name, meta.Version)
	}
	name := meta.Name + "-" + meta.Version + ".tgz"
	file := filepath.Join(h.dir, name)
	if err := os.WriteFile(file, tgz, 0o644); err != nil {
		t.Fatal(err)
	}
	dgst, err := provenance.DigestFile(file)
	if err != nil {
		t.Fatalf("testbed: Helm repository: digest of %s: %v", name, err)
	}
	baseURL := h.URL
	if h.relative {
		baseURL = ""
	}
	if err := h.index.MustAdd(meta, name, baseURL, dgst); err != nil {
		t.Fatalf("testbed: Helm repository: index %s: %v", name, err)
	}
	h.writeIndex(t)
	return meta.Version
}

// Tamper rewrites the archive of chart name's version so that it no longer
// matches index.yaml's digest, leaving index.yaml alone: the chart still
// loads, with a comment appended to its values.yaml, as a registry
// compromised after the index was signed off would serve it.
func (h *HelmRepo) Tamper(t testing.TB, name, version string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.index.Has(name, version) {
		t.Fatalf("testbed: Helm repository: Tamper(%q, %q): no such chart version", name, version)
	}
	file := filepath.Join(h.dir, name+"-"+version+".tgz")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c, err := loader.LoadArchive(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("testbed: Helm repository: Tamper: load %s: %v", file, err)
	}
	values := []byte("# tampered with by the test bed\n")
	for _, f := range c.Raw {
		if f.Name == chartutil.ValuesfileName {
			f.Data = append(f.Data, values...)
			values = nil
		}
	}
	if values != nil { // a chart without values.yaml gets one
		c.Raw = append(c.Raw, &common.File{Name: chartutil.ValuesfileName, ModTime: chartModTime, Data: values})
	}
	if _, err := chartutil.Save(c, h.dir); err != nil {
		t.Fatalf("testbed: Helm repository: Tamper: repackage %s: %v", file, err)
	}
}

// writeIndex writes index.yaml from h.index, sorted as Helm sorts it.
// h.mu is held.
func (h *HelmRepo) writeIndex(t testing.TB) {
	t.Helper()
	h.index.SortEntries()
	// Written beside and renamed, so a client never reads half an index.
	tmp := filepath.Join(h.dir, ".index.yaml.tmp")
	if err := h.index.WriteFile(tmp, 0o644); err != nil {
		t.Fatalf("testbed: Helm repository: write index.yaml: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(h.dir, "index.yaml")); err != nil {
		t.Fatal(err)
	}
}
