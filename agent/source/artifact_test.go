package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// chartTgz is a chart archive packaged with the Helm SDK.
func chartTgz(t *testing.T, name, version, values string) []byte {
	t.Helper()
	return testbed.PackageChart(t, map[string]string{
		"Chart.yaml":        fmt.Sprintf("apiVersion: v2\nname: %s\nversion: %s\n", name, version),
		"values.yaml":       values,
		"templates/cm.yaml": "kind: ConfigMap\n",
	})
}

// chartServer is an HTTPS Helm repository behind basic auth serving
// archives a test can replace; it counts archive downloads.
type chartServer struct {
	srv       *httptest.Server
	mu        sync.Mutex // guards the fields below
	archives  map[string][]byte
	entries   map[string]string // index.yaml's entries, by chart
	downloads int
}

const chartUser, chartPassword = "agent", "chart-s3cret"

func newChartServer(t *testing.T) *chartServer {
	cs := &chartServer{archives: map[string][]byte{}, entries: map[string]string{}}
	cs.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != chartUser || p != chartPassword {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if r.URL.Path == "/index.yaml" {
			fmt.Fprint(w, "apiVersion: v1\nentries:\n")
			for _, e := range cs.entries {
				fmt.Fprint(w, e)
			}
			return
		}
		body, ok := cs.archives[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		cs.downloads++
		_, _ = w.Write(body)
	}))
	t.Cleanup(cs.srv.Close)
	return cs
}

// publish lists name's versions in index.yaml with their archives'
// digests, and serves the archives.
func (cs *chartServer) publish(name string, archives map[string][]byte) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var b strings.Builder
	b.WriteString("  " + name + ":\n")
	for v, a := range archives {
		file := fmt.Sprintf("%s-%s.tgz", name, v)
		cs.archives[file] = a
		fmt.Fprintf(&b, "  - name: %s\n    version: %s\n    digest: %q\n    urls: [%s]\n", name, v, sha(a), file)
	}
	cs.entries[name] = b.String()
}

func (cs *chartServer) replace(file string, body []byte) {
	cs.mu.Lock()
	cs.archives[file] = body
	cs.mu.Unlock()
}

func (cs *chartServer) downloaded() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.downloads
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (cs *chartServer) assignment(chart, version string, archive []byte) *droverv1.AppAssignment {
	return &droverv1.AppAssignment{
		Name: chart, RepoUrl: cs.srv.URL, SourceType: droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY, Chart: chart,
		Commit: version + "@sha256:" + sha(archive),
		Credentials: &droverv1.RepoCredentials{Username: chartUser, Password: chartPassword,
			CaPem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cs.srv.Certificate().Raw}))},
	}
}

// TestFetchHelmChart checks that a pinned chart version is downloaded once,
// verified and unpacked with the chart at the directory's root, and that
// an archive changed under its pinned digest fails that application alone
// with an error saying so.
func TestFetchHelmChart(t *testing.T) {
	ctx := context.Background()
	cs := newChartServer(t)
	web := chartTgz(t, "web", "1.0.0", "replicas: 1\n")
	api := chartTgz(t, "api", "2.0.0", "replicas: 2\n")
	cs.publish("web", map[string][]byte{"1.0.0": web})
	c := newCache(t, t.TempDir(), 1<<30)

	aa := cs.assignment("web", "1.0.0", web)
	dir, release, err := c.Fetch(ctx, aa)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "values.yaml")); err != nil || string(b) != "replicas: 1\n" {
		t.Errorf("values.yaml at the root: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "templates", "cm.yaml")); err != nil {
		t.Errorf("templates/cm.yaml: %v", err)
	}
	release()
	if _, release, err := c.Fetch(ctx, aa); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	if n := cs.downloaded(); n != 1 {
		t.Errorf("archive downloaded %d times for two fetches, want once", n)
	}

	// The repository's archive changes under the pinned version: a new
	// cache must not accept it.
	tampered := chartTgz(t, "web", "1.0.0", "replicas: 100\n")
	cs.replace("web-1.0.0.tgz", tampered)
	cs.publish("api", map[string][]byte{"2.0.0": api})
	fresh := newCache(t, t.TempDir(), 1<<30)
	_, _, err = fresh.Fetch(ctx, aa)
	var mm *artifact.DigestMismatchError
	var se *Error
	if !errors.As(err, &mm) || !errors.As(err, &se) {
		t.Fatalf("fetch of a tampered chart: %v, want an *Error holding a *DigestMismatchError", err)
	}
	want := "chart web-1.0.0.tgz from " + cs.srv.URL + "/web-1.0.0.tgz: SHA-256 sha256:" + sha(tampered) + " does not match the pinned sha256:" + sha(web)
	if !strings.Contains(err.Error(), want) || !retry.IsTransient(err) {
		t.Errorf("error %q (transient %v), want it to contain %q and be retried", err, retry.IsTransient(err), want)
	}
	if strings.Contains(err.Error(), chartPassword) {
		t.Errorf("error %q contains the password", err)
	}
	if _, err := os.Stat(filepath.Join(fresh.dir, reposDir)); err == nil {
		if trees, _ := filepath.Glob(filepath.Join(fresh.dir, reposDir, "*", treesDir, "*")); len(trees) != 0 {
			t.Errorf("a tampered chart left %v in the cache", trees)
		}
	}
	// Another chart of the same repository is not held up.
	if _, release, err := fresh.Fetch(ctx, cs.assignment("api", "2.0.0", api)); err != nil {
		t.Errorf("api after web failed: %v", err)
	} else {
		release()
	}

	// Wrong credentials are permanent and never shown.
	bad := cs.assignment("api", "2.0.0", api)
	bad.Credentials.Password = "wrong-" + chartPassword
	_, _, err = newCache(t, t.TempDir(), 1<<30).Fetch(ctx, bad)
	if !errors.Is(err, ErrAuth) || retry.IsTransient(err) || strings.Contains(err.Error(), chartPassword) {
		t.Errorf("wrong password: %v, want a permanent ErrAuth without the password", err)
	}
}

// A fetched chart is a tree like any other: eviction removes the least
// recently used one when the cache is over its size.
func TestFetchHelmChartEvicts(t *testing.T) {
	ctx := context.Background()
	cs := newChartServer(t)
	big := strings.Repeat("x", 64<<10)
	v1, v2 := chartTgz(t, "web", "1.0.0", "big: "+big+"1\n"), chartTgz(t, "web", "2.0.0", "big: "+big+"2\n")
	cs.publish("web", map[string][]byte{"1.0.0": v1, "2.0.0": v2})
	c := newCache(t, t.TempDir(), 100<<10) // room for one unpacked chart

	dir1, release, err := c.Fetch(ctx, cs.assignment("web", "1.0.0", v1))
	if err != nil {
		t.Fatal(err)
	}
	release()
	_, release, err = c.Fetch(ctx, cs.assignment("web", "2.0.0", v2))
	if err != nil {
		t.Fatal(err)
	}
	release()
	if _, err := os.Stat(dir1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the older chart %s is still there (%v) over the cache's size", dir1, err)
	}
}

func TestFetchRefusesUnknownSourceTypes(t *testing.T) {
	c := newCache(t, t.TempDir(), 1<<30)
	_, _, err := c.Fetch(context.Background(), &droverv1.AppAssignment{Name: "x", RepoUrl: "https://example.com/r", SourceType: droverv1.SourceType(9), Commit: strings.Repeat("a", 40)})
	if !errors.Is(err, ErrInvalid) || retry.IsTransient(err) {
		t.Errorf("unknown source type: %v, want a permanent ErrInvalid", err)
	}
}

// TestFetchOCI pulls a Helm chart and a Flux artifact from a real registry
// by their pinned manifest digests, and refuses a layer the registry
// rewrote on disk, for that application only.
func TestFetchOCI(t *testing.T) {
	ctx := context.Background()
	reg := testbed.StartRegistry(t)
	chartRef, chartDigest := reg.PushChart(t, map[string]string{
		"Chart.yaml":  "apiVersion: v2\nname: web\nversion: 1.0.0\n",
		"values.yaml": "replicas: 1\n",
	})
	manifestsDigest := reg.PushArtifact(t, "manifests/web", "v1", map[string]string{"prod/cm.yaml": "kind: ConfigMap\n"})
	otherDigest := reg.PushArtifact(t, "manifests/api", "v1", map[string]string{"cm.yaml": "kind: ConfigMap\n"})
	creds := &droverv1.RepoCredentials{CaPem: string(reg.CAPEM)}
	oci := func(url, rev string) *droverv1.AppAssignment {
		return &droverv1.AppAssignment{Name: "x", RepoUrl: url, SourceType: droverv1.SourceType_SOURCE_TYPE_OCI, Commit: rev, Credentials: creds}
	}
	c := newCache(t, t.TempDir(), 1<<30)

	dir, release, err := c.Fetch(ctx, oci(chartRef, "1.0.0@"+chartDigest))
	if err != nil {
		t.Fatal(err)
	}
	release()
	if b, err := os.ReadFile(filepath.Join(dir, "values.yaml")); err != nil || string(b) != "replicas: 1\n" {
		t.Errorf("chart values.yaml at the root: %q, %v", b, err)
	}
	dir, release, err = c.Fetch(ctx, oci("oci://"+reg.Host+"/manifests/web", "v1@"+manifestsDigest))
	if err != nil {
		t.Fatal(err)
	}
	release()
	if b, err := os.ReadFile(filepath.Join(dir, "prod", "cm.yaml")); err != nil || string(b) != "kind: ConfigMap\n" {
		t.Errorf("artifact prod/cm.yaml: %q, %v", b, err)
	}

	// The api artifact's layer is rewritten on the registry's disk.
	body, err := os.ReadFile(filepath.Join(reg.Dir, "docker", "registry", "v2", "blobs", "sha256", otherDigest[7:9], otherDigest[7:], "data"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest %s: %v", body, err)
	}
	reg.TamperBlob(t, m.Layers[0].Digest)
	_, _, err = newCache(t, t.TempDir(), 1<<30).Fetch(ctx, oci("oci://"+reg.Host+"/manifests/api", "v1@"+otherDigest))
	var mm *artifact.DigestMismatchError
	if !errors.As(err, &mm) || !retry.IsTransient(err) {
		t.Fatalf("fetch of a tampered layer: %v, want a transient *DigestMismatchError", err)
	}
	// The web artifact, already verified and unpacked, is still served.
	if _, release, err := c.Fetch(ctx, oci("oci://"+reg.Host+"/manifests/web", "v1@"+manifestsDigest)); err != nil {
		t.Errorf("web after api failed: %v", err)
	} else {
		release()
	}
}
