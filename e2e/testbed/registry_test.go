package testbed

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	helmregistry "helm.sh/helm/v4/pkg/registry"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// demoChart is a chart as tests write one.
func demoChart(version string) map[string]string {
	return map[string]string{
		"Chart.yaml":  "apiVersion: v2\nname: demo\nversion: " + version + "\n",
		"values.yaml": "replicas: 1\n",
		"templates/configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n" +
			"data:\n  replicas: {{ .Values.replicas | quote }}\n",
	}
}

// clientRepository is an oras-go client of name on r that trusts only
// r.CAPEM, as a Drover agent given the source's CA would be.
func clientRepository(t *testing.T, r *Registry, name string) *remote.Repository {
	t.Helper()
	client, err := httpClientTrusting(r.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := remote.NewRepository(r.Host + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	repo.Client = client
	return repo
}

// fetchManifest fetches and decodes the manifest dgst of repo, verified
// against dgst.
func fetchManifest(t *testing.T, repo *remote.Repository, dgst string) ocispec.Manifest {
	t.Helper()
	desc, rc, err := repo.FetchReference(t.Context(), dgst)
	if err != nil {
		t.Fatalf("fetch manifest %s: %v", dgst, err)
	}
	defer rc.Close()
	body, err := content.ReadAll(rc, desc)
	if err != nil {
		t.Fatalf("read manifest %s: %v", dgst, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("decode manifest %s: %v", dgst, err)
	}
	return m
}

func TestRegistryPushChartPullByDigest(t *testing.T) {
	r := StartRegistry(t)
	files := demoChart("0.1.0")
	ref, dgst := r.PushChart(t, files)
	if want := "oci://" + r.Host + "/charts/demo"; ref != want {
		t.Errorf("ref = %q, want %q", ref, want)
	}

	repo := clientRepository(t, r, "charts/demo")
	tagged, err := repo.Resolve(t.Context(), "0.1.0")
	if err != nil {
		t.Fatalf("resolve tag 0.1.0: %v", err)
	}
	if tagged.Digest.String() != dgst {
		t.Errorf("tag 0.1.0 is %s, PushChart returned %s", tagged.Digest, dgst)
	}

	// Pull by the digest, as an agent given VERSION@sha256:HEX does.
	m := fetchManifest(t, repo, dgst)
	if m.Config.MediaType != helmregistry.ConfigMediaType || len(m.Layers) != 1 || m.Layers[0].MediaType != helmregistry.ChartLayerMediaType {
		t.Fatalf("manifest: config %s, layers %v; want Helm's chart media types", m.Config.MediaType, m.Layers)
	}
	got, err := content.FetchAll(t.Context(), repo, m.Layers[0])
	if err != nil {
		t.Fatalf("pull the chart layer: %v", err)
	}
	if want := PackageChart(t, files); !bytes.Equal(got, want) {
		t.Errorf("pulled chart (%d bytes) differs from the packaged one (%d bytes)", len(got), len(want))
	}
	if meta := chartMetadata(t, got); meta.Name != "demo" || meta.Version != "0.1.0" {
		t.Errorf("pulled chart is %s %s, want demo 0.1.0", meta.Name, meta.Version)
	}
}

func TestRegistryPushArtifact(t *testing.T) {
	r := StartRegistry(t)
	files := map[string]string{
		"deploy/web.yaml":    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
		"kustomization.yaml": "resources:\n- deploy/web.yaml\n",
	}
	dgst := r.PushArtifact(t, "apps/web", "v1.0.0", files)

	repo := clientRepository(t, r, "apps/web")
	m := fetchManifest(t, repo, dgst)
	if m.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("manifest media type %q, want %q", m.MediaType, ocispec.MediaTypeImageManifest)
	}
	if m.Config.MediaType != FluxConfigMediaType {
		t.Errorf("config media type %q, want %q", m.Config.MediaType, FluxConfigMediaType)
	}
	for _, key := range []string{ocispec.AnnotationRevision, ocispec.AnnotationSource, ocispec.AnnotationCreated} {
		if m.Annotations[key] == "" {
			t.Errorf("annotation %s missing: %v", key, m.Annotations)
		}
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != FluxContentMediaType {
		t.Fatalf("layers %v, want one of %s", m.Layers, FluxContentMediaType)
	}
	layer, err := content.FetchAll(t.Context(), repo, m.Layers[0])
	if err != nil {
		t.Fatalf("pull the layer: %v", err)
	}
	got := untar(t, layer)
	want := map[string]string{"deploy/": "", "deploy/web.yaml": files["deploy/web.yaml"], "kustomization.yaml": files["kustomization.yaml"]}
	if len(got) != len(want) {
		t.Errorf("layer holds %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for name, body := range want {
		if b, ok := got[name]; !ok || b != body {
			t.Errorf("layer file %s = %q (present %t), want %q", name, b, ok, body)
		}
	}
}

// untar reads a tar.gz into its entries: files by name with their
// contents, directories by name with a trailing slash.
func untar(t *testing.T, tgz []byte) map[string]string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	tr := tar.NewReader(gz)
	entries := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatalf("layer is not a tar: %v", err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || !hdr.ModTime.IsZero() && hdr.ModTime.Unix() != 0 {
			t.Errorf("entry %s keeps owner or time: %d/%d %q/%q %v", hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname, hdr.ModTime)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := hdr.Name
		if hdr.Typeflag == tar.TypeDir && !strings.HasSuffix(name, "/") {
			name += "/"
		}
		entries[name] = string(body)
	}
}

func TestRegistryTamperBlob(t *testing.T) {
	r := StartRegistry(t)
	dgst := r.PushArtifact(t, "apps/tampered", "v1", map[string]string{"a.yaml": "a: 1\n"})
	repo := clientRepository(t, r, "apps/tampered")
	pull := func() error {
		_, err := oras.Copy(t.Context(), repo, dgst, memory.New(), "", oras.DefaultCopyOptions)
		return err
	}
	if err := pull(); err != nil {
		t.Fatalf("pull before tampering: %v", err)
	}

	m := fetchManifest(t, repo, dgst)
	layerFile := filepath.Join(r.Dir, "docker/registry/v2/blobs/sha256", m.Layers[0].Digest.Encoded()[:2], m.Layers[0].Digest.Encoded(), "data")
	before, err := os.ReadFile(layerFile)
	if err != nil {
		t.Fatal(err)
	}
	r.TamperBlob(t, m.Layers[0].Digest.String())
	after, err := os.ReadFile(layerFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || bytes.Equal(after, before) {
		t.Fatalf("TamperBlob: %d bytes before, %d after, equal %t; want the same length, other bytes", len(before), len(after), bytes.Equal(after, before))
	}

	err = pull()
	if !errors.Is(err, content.ErrMismatchedDigest) {
		t.Fatalf("pull by digest after tampering with the layer: %v, want %v", err, content.ErrMismatchedDigest)
	}
}

func TestRegistryBasicAuth(t *testing.T) {
	r := StartRegistry(t, RegistryBasicAuth("puller", "s3cret"))
	_, dgst := r.PushChart(t, demoChart("1.2.3"))

	anonymous := clientRepository(t, r, "charts/demo")
	_, _, err := anonymous.FetchReference(t.Context(), dgst)
	var resp *errcode.ErrorResponse
	if !errors.As(err, &resp) || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("pull without credentials: %v, want 401 Unauthorized", err)
	}

	for _, tt := range []struct {
		password string
		want     int // 0: the pull succeeds
	}{{"wrong", http.StatusUnauthorized}, {"s3cret", 0}} {
		repo := clientRepository(t, r, "charts/demo")
		repo.Client = &auth.Client{
			Client:     anonymous.Client.(*http.Client),
			Credential: auth.StaticCredential(r.Host, auth.Credential{Username: "puller", Password: tt.password}),
		}
		_, err := oras.Copy(t.Context(), repo, dgst, memory.New(), "", oras.DefaultCopyOptions)
		switch {
		case tt.want == 0 && err != nil:
			t.Errorf("pull with password %q: %v", tt.password, err)
		case tt.want != 0 && (!errors.As(err, &resp) || resp.StatusCode != tt.want):
			t.Errorf("pull with password %q: %v, want %d", tt.password, err, tt.want)
		}
	}
}

func TestRegistryIgnoresRegistryEnvironment(t *testing.T) {
	// Distribution takes REGISTRY_* variables over its configuration file.
	elsewhere := t.TempDir()
	t.Setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", elsewhere)
	r := StartRegistry(t)
	r.PushArtifact(t, "apps/env", "v1", map[string]string{"a.yaml": "a: 1\n"})
	if _, err := os.Stat(filepath.Join(r.Dir, "docker/registry/v2/repositories/apps/env")); err != nil {
		t.Errorf("the artifact is not under Dir: %v", err)
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) > 0 {
		t.Errorf("the registry stored into $REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: %d entries", len(entries))
	}
}

func TestRegistryBinaryMissing(t *testing.T) {
	const fix = "run `make testbed` (builds it from the Go module proxy, ~3 min once)"
	bin := filepath.Join(t.TempDir(), "bin", "registry")
	err := checkRegistryBinary(bin)
	if err == nil || !strings.Contains(err.Error(), bin) || !strings.HasSuffix(err.Error(), fix) {
		t.Errorf("checkRegistryBinary(missing) = %v, want it to name %s and end with %q", err, bin, fix)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, bin, 0o644)
	if err := checkRegistryBinary(bin); err == nil {
		t.Error("checkRegistryBinary(not executable) = nil, want an error")
	}
	writeFile(t, bin, 0o755)
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkRegistryBinary(bin); err != nil {
		t.Errorf("checkRegistryBinary(executable) = %v, want nil", err)
	}
}

func TestRegistryTestbedDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/cache")
	t.Setenv(RegistryDirEnv, "")
	if got, err := registryTestbedDir(); err != nil || got != "/cache/drover-testbed/"+registryToolchain {
		t.Errorf("registryTestbedDir() = %q, %v; want the versioned directory in the user's cache", got, err)
	}
	t.Setenv(RegistryDirEnv, "/somewhere/else")
	if got, err := registryTestbedDir(); err != nil || got != "/somewhere/else" {
		t.Errorf("registryTestbedDir() = %q, %v; want %s", got, err, RegistryDirEnv)
	}
}
