package testbed

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/v2/loader"
	repo "helm.sh/helm/v4/pkg/repo/v1"
)

// get fetches url with client (basic auth when user is set) and returns
// the status code and body.
func get(t *testing.T, client *http.Client, url, user, password string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, body
}

// loadIndex parses an index.yaml with Helm's repo package.
func loadIndex(t *testing.T, body []byte) *repo.IndexFile {
	t.Helper()
	file := filepath.Join(t.TempDir(), "index.yaml")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	idx, err := repo.LoadIndexFile(file)
	if err != nil {
		t.Fatalf("Helm cannot load the served index.yaml: %v\n%s", err, body)
	}
	return idx
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestHelmRepoServesIndexAndCharts(t *testing.T) {
	h := StartHelmRepo(t)
	if !strings.HasPrefix(h.URL, "https://127.0.0.1:") || !strings.HasSuffix(h.URL, "/") {
		t.Errorf("URL = %q, want https://127.0.0.1:PORT/", h.URL)
	}
	client, err := httpClientTrusting(h.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if v := h.Add(t, demoChart("0.1.0")); v != "0.1.0" {
		t.Errorf("Add returned version %q, want 0.1.0", v)
	}
	h.Add(t, demoChart("0.2.0"))

	status, body := get(t, client, h.URL+"index.yaml", "", "")
	if status != http.StatusOK {
		t.Fatalf("GET index.yaml: %d %s", status, body)
	}
	idx := loadIndex(t, body)
	for _, version := range []string{"0.1.0", "0.2.0"} {
		cv, err := idx.Get("demo", version)
		if err != nil {
			t.Fatalf("index.yaml has no demo %s: %v", version, err)
		}
		if want := h.URL + "demo-" + version + ".tgz"; len(cv.URLs) != 1 || cv.URLs[0] != want {
			t.Errorf("demo %s URLs = %v, want [%s]", version, cv.URLs, want)
		}
		status, tgz := get(t, client, cv.URLs[0], "", "")
		if status != http.StatusOK {
			t.Fatalf("GET %s: %d", cv.URLs[0], status)
		}
		if got := sha256Hex(tgz); got != cv.Digest {
			t.Errorf("demo %s: served .tgz has sha256 %s, index.yaml says %s", version, got, cv.Digest)
		}
		if !bytes.Equal(tgz, PackageChart(t, demoChart(version))) {
			t.Errorf("demo %s: served .tgz differs from PackageChart's", version)
		}
	}
	if latest, err := idx.Get("demo", ""); err != nil || latest.Version != "0.2.0" {
		t.Errorf("latest demo = %v, %v; want 0.2.0", latest, err)
	}
	if n := h.Requests("/index.yaml"); n != 1 {
		t.Errorf("Requests(/index.yaml) = %d, want 1", n)
	}
	if n := h.Requests("/demo-0.1.0.tgz"); n != 1 {
		t.Errorf("Requests(/demo-0.1.0.tgz) = %d, want 1", n)
	}

	// Its CA is its own: a client trusting the system's roots refuses it.
	_, err = http.DefaultClient.Get(h.URL + "index.yaml")
	if err == nil {
		t.Fatal("GET with the system's roots succeeded; want a certificate error")
	}
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Errorf("GET with the system's roots: %v, want a certificate verification error", err)
	}
}

func TestHelmRepoRelativeURLs(t *testing.T) {
	h := StartHelmRepo(t, HelmRepoRelativeURLs())
	h.Add(t, demoChart("0.4.0"))
	client, err := httpClientTrusting(h.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, body := get(t, client, h.URL+"index.yaml", "", "")
	cv, err := loadIndex(t, body).Get("demo", "0.4.0")
	if err != nil {
		t.Fatal(err)
	}
	if len(cv.URLs) != 1 || cv.URLs[0] != "demo-0.4.0.tgz" {
		t.Fatalf("URLs = %v, want [demo-0.4.0.tgz]", cv.URLs)
	}
	// Relative to index.yaml, as Helm resolves it.
	if status, tgz := get(t, client, h.URL+cv.URLs[0], "", ""); status != http.StatusOK || sha256Hex(tgz) != cv.Digest {
		t.Errorf("GET %s: %d, sha256 %s; want 200 and %s", cv.URLs[0], status, sha256Hex(tgz), cv.Digest)
	}
}

func TestHelmRepoBasicAuth(t *testing.T) {
	h := StartHelmRepo(t, HelmRepoBasicAuth("reader", "s3cret"))
	h.Add(t, demoChart("1.0.0"))
	client, err := httpClientTrusting(h.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		user, password string
		want           int
	}{
		{"", "", http.StatusUnauthorized},
		{"reader", "wrong", http.StatusUnauthorized},
		{"reader", "s3cret", http.StatusOK},
	} {
		for _, path := range []string{"index.yaml", "demo-1.0.0.tgz"} {
			if status, _ := get(t, client, h.URL+path, tt.user, tt.password); status != tt.want {
				t.Errorf("GET %s as %q/%q: %d, want %d", path, tt.user, tt.password, status, tt.want)
			}
		}
	}
	if n := h.Requests("/index.yaml"); n != 3 {
		t.Errorf("Requests(/index.yaml) = %d, want 3 (refused ones count)", n)
	}
}

func TestHelmRepoTamper(t *testing.T) {
	h := StartHelmRepo(t)
	h.Add(t, demoChart("0.3.0"))
	client, err := httpClientTrusting(h.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, before := get(t, client, h.URL+"demo-0.3.0.tgz", "", "")
	h.Tamper(t, "demo", "0.3.0")

	_, body := get(t, client, h.URL+"index.yaml", "", "")
	cv, err := loadIndex(t, body).Get("demo", "0.3.0")
	if err != nil {
		t.Fatal(err)
	}
	if cv.Digest != sha256Hex(before) {
		t.Errorf("Tamper changed index.yaml's digest to %s", cv.Digest)
	}
	_, after := get(t, client, h.URL+"demo-0.3.0.tgz", "", "")
	if sha256Hex(after) == cv.Digest {
		t.Fatalf("served .tgz still has index.yaml's digest %s after Tamper", cv.Digest)
	}
	// Still a chart: only the digest gives it away.
	c, err := loader.LoadArchive(bytes.NewReader(after))
	if err != nil {
		t.Fatalf("tampered chart does not load: %v", err)
	}
	if c.Metadata.Name != "demo" || c.Metadata.Version != "0.3.0" {
		t.Errorf("tampered chart is %s %s", c.Metadata.Name, c.Metadata.Version)
	}
}

func TestHelmRepoPlainHTTP(t *testing.T) {
	h := StartHelmRepo(t, HelmRepoPlainHTTP())
	if !strings.HasPrefix(h.URL, "http://127.0.0.1:") || h.CAPEM != nil {
		t.Errorf("URL = %q, CAPEM %d bytes; want http://127.0.0.1:PORT/ and none", h.URL, len(h.CAPEM))
	}
	h.Add(t, demoChart("2.0.0"))
	status, body := get(t, http.DefaultClient, h.URL+"index.yaml", "", "")
	if status != http.StatusOK {
		t.Fatalf("GET index.yaml: %d", status)
	}
	if _, err := loadIndex(t, body).Get("demo", "2.0.0"); err != nil {
		t.Errorf("index.yaml: %v", err)
	}
}

func TestHelmRepoPackageChartIsReproducible(t *testing.T) {
	a, b := PackageChart(t, demoChart("0.1.0")), PackageChart(t, demoChart("0.1.0"))
	if !bytes.Equal(a, b) {
		t.Error("the same files packaged twice give different bytes")
	}
	// Two calls within a second agree even with the time of day in the
	// archive; a fixed time is what makes the bytes the same tomorrow.
	gz, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(chartModTime) {
			t.Errorf("%s has time %v, want the fixed %v", hdr.Name, hdr.ModTime, chartModTime)
		}
	}
	c, err := loader.LoadArchive(bytes.NewReader(a))
	if err != nil {
		t.Fatalf("packaged chart does not load: %v", err)
	}
	if len(c.Templates) != 1 || c.Templates[0].Name != "templates/configmap.yaml" || c.Values["replicas"] != float64(1) {
		t.Errorf("packaged chart: templates %v, values %v", c.Templates, c.Values)
	}
}
