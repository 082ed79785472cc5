package artifact

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/retry"
)

func webChart(version, replicas string) map[string]string {
	return map[string]string{
		"Chart.yaml":        "apiVersion: v2\nname: web\nversion: " + version + "\n",
		"values.yaml":       "replicas: " + replicas + "\n",
		"templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
	}
}

func openOCI(t *testing.T, url string, acc Access) *OCIRepository {
	t.Helper()
	o, err := OpenOCI(url, acc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	return o
}

// TestOCIHelmChart resolves tags and ranges over a real registry's tags,
// pulls a chart by its pinned manifest digest and unpacks it with the
// chart at the root.
func TestOCIHelmChart(t *testing.T) {
	ctx := context.Background()
	reg := testbed.StartRegistry(t)
	ref, d100 := reg.PushChart(t, webChart("1.0.0", "1"))
	_, d110 := reg.PushChart(t, webChart("1.1.0", "2"))
	_, _ = reg.PushChart(t, webChart("2.0.0-rc.1", "3"))
	o := openOCI(t, ref, Access{CAPEM: reg.CAPEM})

	for constraint, want := range map[string]Revision{
		"1.0.0": {"1.0.0", d100},
		"~1.0":  {"1.0.0", d100},
		"1.x":   {"1.1.0", d110},
		"^1":    {"1.1.0", d110},
	} {
		rev, err := o.Resolve(ctx, constraint)
		if err != nil || rev != want {
			t.Errorf("Resolve(%q) = %v, %v; want %v", constraint, rev, err, want)
		}
	}
	_, err := o.Resolve(ctx, ">=2.0.0")
	var nv *NoVersionError
	if !errors.As(err, &nv) || err.Error() != "no tag of "+ref+" satisfies >=2.0.0; highest is 1.1.0" {
		t.Errorf("Resolve(>=2.0.0) = %v, want a *NoVersionError naming 1.1.0", err)
	}
	if _, err := o.Resolve(ctx, "9.9.9"); !errors.Is(err, ErrNotFound) || retry.IsTransient(err) {
		t.Errorf("Resolve(9.9.9) = %v, want a permanent ErrNotFound", err)
	}
	if _, err := o.Resolve(ctx, ""); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "latest") {
		t.Errorf("Resolve(\"\") with no latest tag = %v, want ErrNotFound for latest", err)
	}

	pulled, err := o.Pull(ctx, Revision{"1.1.0", d110})
	if err != nil {
		t.Fatal(err)
	}
	if !pulled.Helm {
		t.Error("a chart pulled as a Flux artifact")
	}
	dir := t.TempDir()
	if err := ExtractTarGz(bytes.NewReader(pulled.Layer), dir, ExtractOptions{StripTopDir: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "values.yaml")); err != nil || string(b) != "replicas: 2\n" {
		t.Errorf("values.yaml: %q, %v", b, err)
	}
}

// TestOCIFluxArtifact pulls an artifact `flux push artifact` made: the
// files at the layer's root.
func TestOCIFluxArtifact(t *testing.T) {
	ctx := context.Background()
	reg := testbed.StartRegistry(t)
	d := reg.PushArtifact(t, "manifests/web", "v1", map[string]string{"prod/cm.yaml": "kind: ConfigMap\n"})
	o := openOCI(t, "oci://"+reg.Host+"/manifests/web", Access{CAPEM: reg.CAPEM})
	rev, err := o.Resolve(ctx, "v1")
	if err != nil || rev != (Revision{"v1", d}) {
		t.Fatalf("Resolve(v1) = %v, %v; want v1@%s", rev, err, d)
	}
	pulled, err := o.Pull(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ExtractTarGz(bytes.NewReader(pulled.Layer), dir, ExtractOptions{StripTopDir: pulled.Helm}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "prod", "cm.yaml")); err != nil || string(b) != "kind: ConfigMap\n" {
		t.Errorf("prod/cm.yaml: %q, %v", b, err)
	}
}

// TestOCITampered checks that content a registry serves under a pinned
// digest but which is not what the digest names is refused, for the
// manifest and for the layer.
func TestOCITampered(t *testing.T) {
	ctx := context.Background()
	reg := testbed.StartRegistry(t)
	ref, d := reg.PushChart(t, webChart("1.0.0", "1"))
	o := openOCI(t, ref, Access{CAPEM: reg.CAPEM})
	rev := Revision{"1.0.0", d}
	var m ocispec.Manifest
	body, err := fetchManifest(ctx, o, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}

	reg.TamperBlob(t, m.Layers[0].Digest.String())
	_, err = o.Pull(ctx, rev)
	var mm *DigestMismatchError
	if !errors.As(err, &mm) || mm.What != "layer" || mm.Want != m.Layers[0].Digest.String() || !retry.IsTransient(err) {
		t.Fatalf("pull of a tampered layer = %v, want a transient *DigestMismatchError for the layer", err)
	}
	if !strings.Contains(err.Error(), "does not match the pinned "+m.Layers[0].Digest.String()+"; the repository's content changed since the hub resolved it") {
		t.Errorf("error %q does not say what changed", err)
	}

	// A registry answering a manifest by its digest with other bytes
	// (distribution itself refuses to serve a corrupt manifest, so a proxy
	// in front of it changes them).
	proxy := manifestRewriter(t, reg)
	po := openOCI(t, strings.Replace(ref, reg.Host, proxy.host, 1), Access{CAPEM: proxy.caPEM})
	_, err = po.Pull(ctx, rev)
	if !errors.As(err, &mm) || mm.What != "manifest" || mm.Want != d {
		t.Fatalf("pull of a changed manifest = %v, want a *DigestMismatchError for the manifest", err)
	}
}

type rewriter struct {
	host  string
	caPEM []byte
}

// manifestRewriter is an HTTPS proxy to reg that adds a newline to every
// manifest it serves: still a valid manifest, no longer the pinned one.
func manifestRewriter(t *testing.T, reg *testbed.Registry) rewriter {
	t.Helper()
	target, _ := url.Parse("https://" + reg.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(reg.CAPEM)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodGet || !strings.Contains(resp.Request.URL.Path, "/manifests/") || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body.Close()
		body = append(body, '\n')
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	srv := httptest.NewTLSServer(proxy)
	t.Cleanup(srv.Close)
	return rewriter{host: srv.Listener.Addr().String(), caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})}
}

func fetchManifest(ctx context.Context, o *OCIRepository, d string) ([]byte, error) {
	_, rc, err := o.repo.Manifests().FetchReference(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(rc)
	return buf.Bytes(), err
}

// TestOCIRefusesOtherArtifacts checks that an image (or anything but a
// Helm chart or Flux artifact) is refused naming its media type.
func TestOCIRefusesOtherArtifacts(t *testing.T) {
	ctx := context.Background()
	reg := testbed.StartRegistry(t)
	ref := "oci://" + reg.Host + "/images/app"
	o := openOCI(t, ref, Access{CAPEM: reg.CAPEM})
	config := []byte("{}")
	cd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
	if err := o.repo.Push(ctx, cd, bytes.NewReader(config)); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{}})
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}
	if err := o.repo.PushReference(ctx, md, bytes.NewReader(body), "v1"); err != nil {
		t.Fatal(err)
	}
	rev, err := o.Resolve(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = o.Pull(ctx, rev)
	if !errors.Is(err, ErrMediaType) || !strings.Contains(err.Error(), `"`+ocispec.MediaTypeImageConfig+`"`) || retry.IsTransient(err) {
		t.Errorf("pull of an image = %v, want a permanent ErrMediaType naming %s", err, ocispec.MediaTypeImageConfig)
	}
}

// TestOCIAccess checks credentials (refused when wrong, never shown,
// never sent over plain HTTP) and the private CA.
func TestOCIAccess(t *testing.T) {
	ctx := context.Background()
	const user, pass = "puller", "reg-s3cret"
	reg := testbed.StartRegistry(t, testbed.RegistryBasicAuth(user, pass))
	ref, d := reg.PushChart(t, webChart("1.0.0", "1"))

	if rev, err := openOCI(t, ref, Access{Username: user, Password: pass, CAPEM: reg.CAPEM}).Resolve(ctx, "1.0.0"); err != nil || rev.Digest != d {
		t.Fatalf("with credentials: %v, %v", rev, err)
	}
	_, err := openOCI(t, ref, Access{Username: user, Password: "wrong-" + pass, CAPEM: reg.CAPEM}).Resolve(ctx, "1.0.0")
	if !errors.Is(err, ErrAuth) || retry.IsTransient(err) || strings.Contains(err.Error(), pass) {
		t.Errorf("wrong password: %v, want a permanent ErrAuth without the password", err)
	}
	if _, err := openOCI(t, ref, Access{CAPEM: reg.CAPEM}).Resolve(ctx, "1.x"); !errors.Is(err, ErrAuth) {
		t.Errorf("no credentials: %v, want ErrAuth", err)
	}
	_, err = openOCI(t, ref, Access{Username: user, Password: pass}).Resolve(ctx, "1.0.0")
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), pass) {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
	_, err = OpenOCI(ref, Access{Username: user, Password: pass, Insecure: true})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "credentials are not sent over plain HTTP") {
		t.Errorf("credentials with insecure: %v", err)
	}
}

// A registry that answers plain HTTP only is refused, saying how to allow
// it, unless the source is insecure.
func TestOCIPlainHTTPRegistry(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	ref := "oci://" + srv.Listener.Addr().String() + "/charts/web"
	_, err := openOCI(t, ref, Access{}).Resolve(context.Background(), "1.0.0")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "the server answers plain HTTP only; set insecure: true to allow it") {
		t.Errorf("a plain HTTP registry: %v", err)
	}
	// Insecure speaks plain HTTP to it: the registry's own answer (404).
	if _, err := openOCI(t, ref, Access{Insecure: true}).Resolve(context.Background(), "1.0.0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a plain HTTP registry, insecure: %v, want its 404", err)
	}
}
