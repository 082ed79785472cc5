package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
)

// tarEntry is one entry of a test archive.
type tarEntry struct {
	name     string
	typeflag byte
	body     string
	linkname string
	mode     int64
}

// tgz builds a gzip-compressed tar of entries, in order.
func tgz(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typeflag, Linkname: e.linkname, Mode: e.mode}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// chartArchive is a chart archive as `helm package` lays it out: every file
// under a directory named for the chart.
func chartArchive(t testing.TB, name, version string, files map[string]string) []byte {
	t.Helper()
	all := map[string]string{"Chart.yaml": fmt.Sprintf("apiVersion: v2\nname: %s\nversion: %s\n", name, version)}
	for k, v := range files {
		all[k] = v
	}
	names := make([]string, 0, len(all))
	for k := range all {
		names = append(names, k)
	}
	sort.Strings(names)
	var entries []tarEntry
	for _, n := range names {
		entries = append(entries, tarEntry{name: name + "/" + n, body: all[n]})
	}
	return tgz(t, entries...)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// helmRepo is a Helm repository over HTTPS on loopback: index.yaml and
// chart archives, optionally behind basic auth. It records the
// Authorization headers it receives.
type helmRepo struct {
	srv  *httptest.Server
	user string
	pass string

	mu       sync.Mutex // guards the fields below
	files    map[string][]byte
	entries  []string // index.yaml entries, YAML
	authSeen []string
}

func newHelmRepo(t testing.TB, tls bool) *helmRepo {
	h := &helmRepo{files: map[string][]byte{}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.authSeen = append(h.authSeen, r.Header.Get("Authorization"))
		body, ok := h.files[strings.TrimPrefix(r.URL.Path, "/")]
		user, pass := h.user, h.pass
		h.mu.Unlock()
		if user != "" {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	})
	if tls {
		h.srv = httptest.NewTLSServer(handler)
	} else {
		h.srv = httptest.NewServer(handler)
	}
	t.Cleanup(h.srv.Close)
	return h
}

func (h *helmRepo) URL() string { return h.srv.URL + "/" }

func (h *helmRepo) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: h.srv.Certificate().Raw})
}

// add publishes a chart archive at path and lists it in index.yaml with
// urls[0] = url (path when empty) and the archive's digest unless
// noDigest.
func (h *helmRepo) add(t testing.TB, name, version, path, url string, noDigest bool, archive []byte) {
	t.Helper()
	if url == "" {
		url = path
	}
	digest := ""
	if !noDigest {
		digest = "\n    digest: " + sha(archive)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if path != "" {
		h.files[path] = archive
	}
	h.entries = append(h.entries, fmt.Sprintf("  %s:\n  - apiVersion: v2\n    name: %s\n    version: %s\n    created: \"2026-01-01T00:00:00Z\"%s\n    urls:\n    - %s\n", name, name, version, digest, url))
	h.writeIndexLocked()
}

// writeIndexLocked writes index.yaml as `helm repo index` does: entries
// grouped by chart name.
func (h *helmRepo) writeIndexLocked() {
	byName := map[string][]string{}
	var order []string
	for _, e := range h.entries {
		head, rest, _ := strings.Cut(e, "\n")
		if _, ok := byName[head]; !ok {
			order = append(order, head)
		}
		byName[head] = append(byName[head], rest)
	}
	var b strings.Builder
	b.WriteString("apiVersion: v1\ngenerated: \"2026-01-01T00:00:00Z\"\nentries:\n")
	for _, head := range order {
		b.WriteString(head + "\n")
		for _, r := range byName[head] {
			b.WriteString(r)
		}
	}
	h.files["index.yaml"] = []byte(b.String())
}

func (h *helmRepo) replace(path string, body []byte) {
	h.mu.Lock()
	h.files[path] = body
	h.mu.Unlock()
}

func (h *helmRepo) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.authSeen...)
}
