package gitwatch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
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

// An OCI repository's applications are resolved with at most one tag list
// per poll, however many ranges they ask for, each to TAG@MANIFEST_DIGEST.
func TestWatcherResolvesOCITagsWithOneTagList(t *testing.T) {
	reg := testbed.StartRegistry(t)
	chart := func(v string) map[string]string {
		return map[string]string{"Chart.yaml": "apiVersion: v2\nname: web\nversion: " + v + "\n"}
	}
	_, d10 := reg.PushChart(t, chart("1.0.0"))
	_, d11 := reg.PushChart(t, chart("1.1.0"))
	// A proxy in front of the registry counts tag lists.
	target, _ := neturl.Parse("https://" + reg.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(reg.CAPEM)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	var lists atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			lists.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	url := "oci://" + srv.Listener.Addr().String() + "/charts/web"
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	oci := droverv1.SourceType_SOURCE_TYPE_OCI
	src := &source{creds: map[string]Access{url: {CAPEM: ca}}}
	src.set(
		Target{App: "exact", RepoURL: url, SourceType: oci, Version: "1.0.0"},
		Target{App: "range", RepoURL: url, SourceType: oci, Version: "1.x"},
		Target{App: "tilde", RepoURL: url, SourceType: oci, Version: "~1.0"},
		Target{App: "latest", RepoURL: url, SourceType: oci},
	)
	snk := newSink()
	w := newWatcher(t, Config{Interval: time.Hour}, src, snk)
	if _, err := w.Refresh(context.Background(), "range"); err != nil {
		t.Fatal(err)
	}
	if n := lists.Load(); n != 1 {
		t.Errorf("tags listed %d times for two ranges, want once", n)
	}
	for app, want := range map[string]string{"exact": "1.0.0@" + d10, "range": "1.1.0@" + d11, "tilde": "1.0.0@" + d10} {
		if c := snk.commit(app); c != want {
			t.Errorf("%s resolved to %q (%v), want %q", app, c, snk.err(app), want)
		}
	}
	// No "latest" tag: that application's error, not the registry's.
	if err := snk.err("latest"); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("latest: %v, want ErrNotFound", err)
	}
}
