package gitwatch

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/artifact"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// A Helm repository's applications are resolved with one index.yaml fetch
// per poll, each to VERSION@sha256:DIGEST, and a version no chart has is
// that application's error alone.
func TestWatcherResolvesHelmChartsWithOneIndexFetch(t *testing.T) {
	digest10, digest11 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	index := "apiVersion: v1\nentries:\n  web:\n" +
		"  - name: web\n    version: 1.1.0\n    digest: \"" + digest11 + "\"\n    urls: [web-1.1.0.tgz]\n" +
		"  - name: web\n    version: 1.0.0\n    digest: \"" + digest10 + "\"\n    urls: [web-1.0.0.tgz]\n"
	var fetches atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/charts/index.yaml" {
			http.NotFound(w, r)
			return
		}
		fetches.Add(1)
		_, _ = w.Write([]byte(index))
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	url := srv.URL + "/charts"

	helm := droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY
	src := &source{creds: map[string]Access{url: {CAPEM: ca}}}
	src.set(
		Target{App: "exact", RepoURL: url, SourceType: helm, Chart: "web", Version: "1.0.0"},
		Target{App: "latest", RepoURL: url, SourceType: helm, Chart: "web"},
		Target{App: "range", RepoURL: url, SourceType: helm, Chart: "web", Version: "~1.0"},
		Target{App: "too-new", RepoURL: url, SourceType: helm, Chart: "web", Version: ">=2.0.0"},
	)
	snk := newSink()
	w := newWatcher(t, Config{Interval: time.Hour}, src, snk)

	got, err := w.Refresh(context.Background(), "latest")
	if err != nil {
		t.Fatal(err)
	}
	if want := "1.1.0@sha256:" + digest11; got != want {
		t.Errorf("Refresh(latest) = %q, want %q", got, want)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("index.yaml fetched %d times for four applications, want once", n)
	}
	for app, want := range map[string]string{"exact": "1.0.0@sha256:" + digest10, "latest": "1.1.0@sha256:" + digest11, "range": "1.0.0@sha256:" + digest10} {
		if c := snk.commit(app); c != want {
			t.Errorf("%s resolved to %q, want %q", app, c, want)
		}
	}
	var nv *artifact.NoVersionError
	err = snk.err("too-new")
	if !errors.As(err, &nv) || err.Error() != "no version of chart web in "+url+" satisfies >=2.0.0; highest is 1.1.0" {
		t.Errorf("too-new: %v, want a *NoVersionError naming the highest version", err)
	}

	// Without the CA the repository fails as a whole, for every
	// application, and the poll says so.
	src.mu.Lock()
	src.creds = nil
	src.mu.Unlock()
	if _, err := w.Refresh(context.Background(), "exact"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Refresh without the CA: %v, want a certificate error", err)
	}
	for _, app := range []string{"exact", "latest", "range", "too-new"} {
		if err := snk.err(app); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: %v, want the repository's certificate error", app, err)
		}
	}
}
