package artifact

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/retry"
)

// TestHelmRepoMadeByHelm resolves and fetches from repositories whose
// index.yaml Helm's own repo package wrote, with absolute and with
// relative chart URLs, behind basic auth and a private CA, and refuses an
// archive rewritten after the index was written.
func TestHelmRepoMadeByHelm(t *testing.T) {
	const user, pass = "reader", "helm-s3cret"
	for _, tc := range []struct {
		name string
		opts []testbed.HelmRepoOption
	}{
		{"absolute URLs", []testbed.HelmRepoOption{testbed.HelmRepoBasicAuth(user, pass)}},
		{"relative URLs", []testbed.HelmRepoOption{testbed.HelmRepoBasicAuth(user, pass), testbed.HelmRepoRelativeURLs()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			h := testbed.StartHelmRepo(t, tc.opts...)
			h.Add(t, webChart("1.0.0", "1"))
			h.Add(t, webChart("1.1.0", "2"))
			acc := Access{Username: user, Password: pass, CAPEM: h.CAPEM}

			ix, err := FetchIndex(ctx, h.URL, acc)
			if err != nil {
				t.Fatal(err)
			}
			rev, err := ix.Resolve(ctx, "web", "~1.1", acc)
			if err != nil {
				t.Fatal(err)
			}
			archive, err := FetchChart(ctx, h.URL, "web", rev, acc)
			if err != nil {
				t.Fatal(err)
			}
			if got := "sha256:" + sha(archive); got != rev.Digest || rev.Version != "1.1.0" {
				t.Errorf("resolved %s; the archive's SHA-256 is %s", rev, got)
			}
			dir := t.TempDir()
			if err := ExtractTarGz(bytes.NewReader(archive), dir, ExtractOptions{StripTopDir: true}); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "values.yaml")); err != nil || string(b) != "replicas: 2\n" {
				t.Errorf("values.yaml: %q, %v", b, err)
			}

			h.Tamper(t, "web", "1.1.0")
			_, err = FetchChart(ctx, h.URL, "web", rev, acc)
			var mm *DigestMismatchError
			if !errors.As(err, &mm) || !retry.IsTransient(err) || strings.Contains(err.Error(), pass) {
				t.Fatalf("fetch of a tampered chart: %v, want a transient *DigestMismatchError", err)
			}
			if want := "chart web-1.1.0.tgz from " + h.URL + "web-1.1.0.tgz: SHA-256 "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start %q", err, want)
			}
		})
	}
}
