package testbed

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"
	helmregistry "helm.sh/helm/v4/pkg/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// registryToolchain names the cache directory `make testbed` builds the
// registry into; e2e/testbed/registrybuild/build.sh uses the same name.
const registryToolchain = "registry-v3.1.2"

// RegistryDirEnv names the directory holding bin/registry, as
// e2e/testbed/registrybuild/build.sh prints it. Unset, the test bed looks
// where `make testbed` builds it in the user's cache.
const RegistryDirEnv = "DROVER_REGISTRY_DIR"

// Media types and annotations of an artifact made by `flux push artifact`.
const (
	FluxConfigMediaType  = "application/vnd.cncf.flux.config.v1+json"
	FluxContentMediaType = "application/vnd.cncf.flux.content.v1.tar+gzip"
)

// Registry is an OCI registry (CNCF Distribution's registry, the program
// most private registries run) serving HTTPS on 127.0.0.1 with a
// certificate of a CA made for it, storing blobs on the filesystem.
type Registry struct {
	// Host is where it listens, 127.0.0.1:PORT: the host of oci:// refs.
	Host string
	// CAPEM is the CA that signed its certificate; nothing else trusts it.
	CAPEM []byte
	// Dir is the storage root (the filesystem driver's rootdirectory).
	Dir string

	client         *http.Client // trusts CAPEM
	user, password string       // basic-auth credentials, with RegistryBasicAuth
}

// RegistryOption configures StartRegistry.
type RegistryOption func(*registryConfig)

type registryConfig struct {
	user, password string
}

// RegistryBasicAuth makes the registry refuse every request without these
// basic-auth credentials (Distribution's htpasswd authentication, as a
// private registry without a token server has). The Registry's own
// methods use them.
func RegistryBasicAuth(user, password string) RegistryOption {
	return func(c *registryConfig) { c.user, c.password = user, password }
}

// StartRegistry starts a registry for t, stopped when t ends. Its log
// goes to a file whose end is printed if the registry fails or t does.
func StartRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	var cfg registryConfig
	for _, o := range opts {
		o(&cfg)
	}
	dir, err := registryTestbedDir()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	bin := filepath.Join(dir, "bin", "registry")
	if err := checkRegistryBinary(bin); err != nil {
		t.Fatal(err)
	}
	pki, err := newServingPKI("registry")
	if err != nil {
		t.Fatalf("testbed: registry: %v", err)
	}
	client, err := pki.httpClient()
	if err != nil {
		t.Fatalf("testbed: registry: %v", err)
	}

	work := t.TempDir()
	r := &Registry{CAPEM: pki.caCert, Dir: filepath.Join(work, "storage"), client: client, user: cfg.user, password: cfg.password}
	htpasswd := ""
	if r.user != "" || r.password != "" {
		htpasswd = filepath.Join(work, "htpasswd")
		if err := writeHtpasswd(htpasswd, r.user, r.password); err != nil {
			t.Fatalf("testbed: registry: %v", err)
		}
	}
	certFile, keyFile := filepath.Join(work, "tls.crt"), filepath.Join(work, "tls.key")
	for _, f := range []struct {
		path string
		data []byte
	}{{certFile, pki.serverCert}, {keyFile, pki.serverKey}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatalf("testbed: registry: %v", err)
		}
	}

	started := time.Now()
	var p *Process
	// A port found free can be taken by another test binary before the
	// registry binds it; then the registry exits saying so, and another
	// port is tried.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testbed: registry: %v", err)
		}
		r.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		config := filepath.Join(work, "config.yml")
		if err := os.WriteFile(config, registryConfigFile(r.Dir, r.Host, certFile, keyFile, htpasswd), 0o600); err != nil {
			t.Fatalf("testbed: registry: %v", err)
		}
		p, err = StartProcess("registry "+r.Host, bin, []string{"serve", config}, registryEnv(), work, filepath.Join(work, "registry.log"))
		if err != nil {
			t.Fatalf("testbed: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
		err = waitUntil(ctx, "registry", []*Process{p}, func(ctx context.Context) (bool, error) {
			return r.ping(ctx)
		})
		cancel()
		if err == nil {
			break
		}
		p.Stop(stopGrace)
		if !p.bindFailed() || attempt == bindAttempts {
			t.Fatalf("testbed: start the registry: %v", err)
		}
	}

	var mu sync.Mutex // guards stopped
	stopped := false
	t.Cleanup(func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		p.Stop(stopGrace)
		if t.Failed() {
			t.Logf("testbed: last lines of the registry's log %s:\n%s", p.LogPath(), p.Tail(logTailLines))
		}
	})
	go func() {
		<-p.done
		mu.Lock()
		defer mu.Unlock()
		if !stopped && !p.stopping.Load() {
			t.Errorf("testbed: %v", p.ExitError())
		}
	}()
	t.Logf("testbed: OCI registry on %s ready in %s; storage in %s", r.Host, since(started), r.Dir)
	return r
}

// registryEnv is the test's environment without REGISTRY_* variables,
// which would override the configuration file, and with tracing off:
// Distribution exports traces over OTLP unless told not to, and a test
// has nowhere to send them.
func registryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env, "OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true")
}

// registryConfigFile is the registry's configuration: filesystem storage,
// TLS, basic authentication if htpasswd is set, nothing running in the
// background.
func registryConfigFile(storage, addr, certFile, keyFile, htpasswd string) []byte {
	// JSON is YAML, and json.Marshal quotes the paths properly.
	cfg := map[string]any{
		"version": "0.1",
		// Requests are logged once, by the application log; the access log
		// would repeat each.
		"log": map[string]any{"level": "info", "formatter": "text", "accesslog": map[string]any{"disabled": true}},
		"storage": map[string]any{
			"filesystem":  map[string]any{"rootdirectory": storage},
			"delete":      map[string]any{"enabled": true},
			"maintenance": map[string]any{"uploadpurging": map[string]any{"enabled": false}},
		},
		"http": map[string]any{
			"addr": addr,
			// Signs upload state; without one the registry makes one up and
			// warns about load balancers.
			"secret": randomHex(16),
			"tls":    map[string]any{"certificate": certFile, "key": keyFile},
		},
	}
	if htpasswd != "" {
		cfg["auth"] = map[string]any{"htpasswd": map[string]any{"realm": "drover-testbed", "path": htpasswd}}
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // only strings and maps
	}
	return b
}

// writeHtpasswd writes an htpasswd file with one user, bcrypt-hashed at
// the lowest cost: the file protects nothing, and each request checks it.
func writeHtpasswd(path, user, password string) error {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return fmt.Errorf("hash the registry password: %w", err)
	}
	return os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600)
}

// ping reports whether the registry answers GET /v2/ with 200, which it
// does only once it serves the API (and, with RegistryBasicAuth, only to
// the credentials).
func (r *Registry) ping(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+r.Host+"/v2/", nil)
	if err != nil {
		return false, err
	}
	if r.user != "" || r.password != "" {
		req.SetBasicAuth(r.user, r.password)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return true, nil
}

// registryTestbedDir is where bin/registry is: $DROVER_REGISTRY_DIR, or
// the versioned directory in the user's cache where `make testbed` builds
// it.
func registryTestbedDir() (string, error) {
	if dir := os.Getenv(RegistryDirEnv); dir != "" {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the test bed's registry: %w; set %s", err, RegistryDirEnv)
	}
	return filepath.Join(cache, "drover-testbed", registryToolchain), nil
}

// checkRegistryBinary returns an error saying how to build bin if it is
// not an executable file, or nil.
func checkRegistryBinary(bin string) error {
	info, err := os.Stat(bin)
	if err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 {
		return nil
	}
	return fmt.Errorf("testbed: the OCI registry binary is missing (%s): "+
		"run `make testbed` (builds it from the Go module proxy, ~3 min once)", bin)
}

// repository is an oras-go client of the registry's repository name.
func (r *Registry) repository(t testing.TB, name string) *remote.Repository {
	t.Helper()
	repo, err := remote.NewRepository(r.Host + "/" + name)
	if err != nil {
		t.Fatalf("testbed: registry repository %q: %v", name, err)
	}
	repo.Client = &auth.Client{
		Client:     r.client,
		Credential: auth.StaticCredential(r.Host, auth.Credential{Username: r.user, Password: r.password}),
	}
	return repo
}

// PushChart packages the chart in files with the Helm SDK and pushes it
// as `helm push` does, to oci://HOST/charts/NAME with the chart's version
// as the tag. It returns that ref (without the tag) and the manifest's
// digest.
func (r *Registry) PushChart(t testing.TB, files map[string]string) (ref, manifestDigest string) {
	t.Helper()
	tgz := PackageChart(t, files)
	meta := chartMetadata(t, tgz)
	client, err := helmregistry.NewClient(
		helmregistry.ClientOptHTTPClient(r.client),
		helmregistry.ClientOptBasicAuth(r.user, r.password),
		// No credentials: keep the Helm client off the user's files.
		helmregistry.ClientOptCredentialsFile(filepath.Join(t.TempDir(), "config.json")),
	)
	if err != nil {
		t.Fatalf("testbed: Helm registry client: %v", err)
	}
	ref = "oci://" + r.Host + "/charts/" + meta.Name
	res, err := client.Push(tgz, r.Host+"/charts/"+meta.Name+":"+meta.Version)
	if err != nil {
		t.Fatalf("testbed: push chart %s %s to %s: %v", meta.Name, meta.Version, ref, err)
	}
	return ref, res.Manifest.Digest
}

// PushArtifact pushes files to HOST/repo:tag as `flux push artifact`
// does: an OCI image manifest whose config has Flux's config media type,
// one layer of Flux's content media type holding the files as a tar.gz
// (no owners, no times), and the source, revision and created
// annotations. It returns the manifest's digest.
func (r *Registry) PushArtifact(t testing.TB, repo, tag string, files map[string]string) string {
	t.Helper()
	ctx := t.Context()
	target := r.repository(t, repo)
	layer, err := artifactTarball(files)
	if err != nil {
		t.Fatalf("testbed: artifact for %s:%s: %v", repo, tag, err)
	}
	config := []byte("{}")
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    blobDescriptor(FluxConfigMediaType, config),
		Layers:    []ocispec.Descriptor{blobDescriptor(FluxContentMediaType, layer)},
		Annotations: map[string]string{
			ocispec.AnnotationSource:   "https://git.drover.invalid/testbed/" + repo,
			ocispec.AnnotationRevision: tag,
			ocispec.AnnotationCreated:  time.Now().UTC().Format(time.RFC3339),
		},
	}
	for _, blob := range []struct {
		desc ocispec.Descriptor
		data []byte
	}{{manifest.Config, config}, {manifest.Layers[0], layer}} {
		if err := target.Push(ctx, blob.desc, bytes.NewReader(blob.data)); err != nil {
			t.Fatalf("testbed: push artifact blob %s to %s: %v", blob.desc.MediaType, repo, err)
		}
	}
	body, err := json.Marshal(manifest)
	if err != nil {
		t.Fatal(err)
	}
	desc := blobDescriptor(ocispec.MediaTypeImageManifest, body)
	if err := target.PushReference(ctx, desc, bytes.NewReader(body), tag); err != nil {
		t.Fatalf("testbed: push artifact manifest to %s:%s: %v", repo, tag, err)
	}
	return desc.Digest.String()
}

func blobDescriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// artifactTarball is files as Flux's artifact builder archives a
// directory: the directories, then their files, in lexical order (as a
// walk visits them), with no owner names or ids and no times.
func artifactTarball(files map[string]string) ([]byte, error) {
	names := make([]string, 0, len(files))
	dirs := map[string]bool{}
	for name := range files {
		if !fs.ValidPath(name) {
			return nil, fmt.Errorf("file name %q: give a relative slash-separated path", name)
		}
		names = append(names, name)
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		names = append(names, d+"/")
	}
	sort.Strings(names)

	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, name := range names {
		hdr := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		var body []byte
		if name[len(name)-1] == '/' {
			hdr.Mode, hdr.Typeflag = 0o755, tar.TypeDir
		} else {
			body = []byte(files[name])
			hdr.Size = int64(len(body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var sha256Digest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// TamperBlob rewrites the stored bytes of the blob (a manifest, config or
// layer) with digest in place: same length, every byte different. The
// registry serves them as they are, under the same digest, as a corrupt
// disk or a compromised registry would; a client that verifies what it
// pulls must refuse them.
func (r *Registry) TamperBlob(t testing.TB, dgst string) {
	t.Helper()
	if !sha256Digest.MatchString(dgst) {
		t.Fatalf("testbed: TamperBlob(%q): give a digest sha256:<64 hex digits>", dgst)
	}
	hex := dgst[len("sha256:"):]
	file := filepath.Join(r.Dir, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("testbed: TamperBlob: the registry has no blob %s: %v", dgst, err)
	}
	for i := range data {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatalf("testbed: TamperBlob: %v", err)
	}
}

// Layers returns the digests of the layers of the manifest with digest
// manifestDigest in repository repo ("charts/web"), in order: what
// TamperBlob takes to corrupt a chart's or an artifact's content while its
// manifest, and so the revision a hub resolved, stays the same.
func (r *Registry) Layers(t testing.TB, repo, manifestDigest string) []string {
	t.Helper()
	_, rc, err := r.repository(t, repo).FetchReference(t.Context(), manifestDigest)
	if err != nil {
		t.Fatalf("testbed: fetch manifest %s of %s: %v", manifestDigest, repo, err)
	}
	defer rc.Close()
	var m ocispec.Manifest
	if err := json.NewDecoder(io.LimitReader(rc, 4<<20)).Decode(&m); err != nil {
		t.Fatalf("testbed: manifest %s of %s: %v", manifestDigest, repo, err)
	}
	out := make([]string, len(m.Layers))
	for i, l := range m.Layers {
		out[i] = l.Digest.String()
	}
	return out
}
