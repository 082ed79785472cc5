package artifact

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/drover-dev/drover/internal/retry"
)

// webRepo is a repository holding web 1.0.0, 1.1.0 and 2.0.0-rc.1.
func webRepo(t *testing.T) (*helmRepo, map[string][]byte) {
	h := newHelmRepo(t, true)
	archives := map[string][]byte{}
	for _, v := range []string{"1.0.0", "1.1.0", "2.0.0-rc.1"} {
		archives[v] = chartArchive(t, "web", v, map[string]string{"values.yaml": "v: " + v + "\n"})
		h.add(t, "web", v, "charts/web-"+v+".tgz", "", false, archives[v])
	}
	return h, archives
}

func TestHelmResolvePicksTheVersion(t *testing.T) {
	ctx := context.Background()
	h, archives := webRepo(t)
	acc := Access{CAPEM: h.CAPEM()}
	ix, err := FetchIndex(ctx, h.URL(), acc)
	if err != nil {
		t.Fatal(err)
	}
	for constraint, want := range map[string]string{
		"":           "1.1.0", // the highest without a pre-release
		"1.0.0":      "1.0.0",
		"~1.0":       "1.0.0",
		"1.x":        "1.1.0",
		">=1.0.0-0":  "2.0.0-rc.1",
		"2.0.0-rc.1": "2.0.0-rc.1",
	} {
		rev, err := ix.Resolve(ctx, "web", constraint, acc)
		if err != nil {
			t.Errorf("Resolve(%q): %v", constraint, err)
			continue
		}
		if rev.Version != want || rev.Digest != "sha256:"+sha(archives[want]) {
			t.Errorf("Resolve(%q) = %v, want %s@sha256:%s", constraint, rev, want, sha(archives[want]))
		}
	}

	_, err = ix.Resolve(ctx, "web", ">=2.0.0", acc)
	var nv *NoVersionError
	if !errors.As(err, &nv) || !errors.Is(err, ErrNotFound) || retry.IsTransient(err) {
		t.Fatalf("Resolve(>=2.0.0) = %v, want a permanent *NoVersionError", err)
	}
	want := "no version of chart web in " + h.URL() + " satisfies >=2.0.0; highest is 1.1.0"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if _, err := ix.Resolve(ctx, "db", "", acc); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "chart db is not in") {
		t.Errorf("Resolve(db) = %v, want ErrNotFound naming the chart", err)
	}
}

// An index without digests (some generators write none) is resolved by
// downloading the archive once and hashing it.
func TestHelmResolveHashesWhenTheIndexHasNoDigest(t *testing.T) {
	ctx := context.Background()
	h := newHelmRepo(t, true)
	archive := chartArchive(t, "web", "1.0.0", nil)
	h.add(t, "web", "1.0.0", "web-1.0.0.tgz", "", true, archive)
	acc := Access{CAPEM: h.CAPEM()}
	ix, err := FetchIndex(ctx, h.URL(), acc)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := ix.Resolve(ctx, "web", "", acc)
	if err != nil {
		t.Fatal(err)
	}
	if rev.String() != "1.0.0@sha256:"+sha(archive) {
		t.Errorf("revision %s, want the archive's SHA-256 %s", rev, sha(archive))
	}
}

func TestHelmFetchChartVerifiesTheDigest(t *testing.T) {
	ctx := context.Background()
	h, archives := webRepo(t)
	acc := Access{CAPEM: h.CAPEM()}
	rev := Revision{Version: "1.1.0", Digest: "sha256:" + sha(archives["1.1.0"])}
	got, err := FetchChart(ctx, h.URL(), "web", rev, acc)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(archives["1.1.0"]) {
		t.Fatal("FetchChart returned other bytes than the archive")
	}

	// The repository's content changes under the pinned revision.
	tampered := chartArchive(t, "web", "1.1.0", map[string]string{"values.yaml": "evil: true\n"})
	h.replace("charts/web-1.1.0.tgz", tampered)
	_, err = FetchChart(ctx, h.URL(), "web", rev, acc)
	var mm *DigestMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("FetchChart of a tampered archive = %v, want *DigestMismatchError", err)
	}
	want := "chart web-1.1.0.tgz from " + h.URL() + "charts/web-1.1.0.tgz: SHA-256 sha256:" + sha(tampered) +
		" does not match the pinned " + rev.Digest + "; the repository's content changed since the hub resolved it"
	if err.Error() != want {
		t.Errorf("error\n %q\nwant\n %q", err, want)
	}
	if !retry.IsTransient(err) {
		t.Error("a digest mismatch should be retried with backoff like any fetch error")
	}

	// A version the index no longer lists.
	gone := Revision{Version: "0.9.0", Digest: rev.Digest}
	if _, err := FetchChart(ctx, h.URL(), "web", gone, acc); !errors.Is(err, ErrNotFound) {
		t.Errorf("FetchChart(0.9.0) = %v, want ErrNotFound", err)
	}
}

func TestHelmCredentialsStayWithTheRepository(t *testing.T) {
	ctx := context.Background()
	const user, pass = "reader", "s3cret-Pa55"
	h := newHelmRepo(t, true)
	h.user, h.pass = user, pass
	other := newHelmRepo(t, true) // another host (port) serving one archive
	local := chartArchive(t, "web", "1.0.0", nil)
	remote := chartArchive(t, "api", "1.0.0", nil)
	h.add(t, "web", "1.0.0", "web-1.0.0.tgz", "", false, local)
	other.replace("api-1.0.0.tgz", remote)
	h.add(t, "api", "1.0.0", "", other.URL()+"api-1.0.0.tgz", false, remote)
	// Both test servers share httptest's one certificate.
	acc := Access{Username: user, Password: pass, CAPEM: h.CAPEM()}

	if _, err := FetchChart(ctx, h.URL(), "web", Revision{"1.0.0", "sha256:" + sha(local)}, acc); err != nil {
		t.Fatal(err)
	}
	if _, err := FetchChart(ctx, h.URL(), "api", Revision{"1.0.0", "sha256:" + sha(remote)}, acc); err != nil {
		t.Fatal(err)
	}
	for _, a := range other.seen() {
		if a != "" {
			t.Errorf("the chart's other host received Authorization %q", a)
		}
	}

	// Wrong credentials: ErrAuth, permanent, and never the password.
	_, err := FetchIndex(ctx, h.URL(), Access{Username: user, Password: "wrong-" + pass, CAPEM: h.CAPEM()})
	if !errors.Is(err, ErrAuth) || retry.IsTransient(err) {
		t.Fatalf("wrong password: %v, want permanent ErrAuth", err)
	}
	if strings.Contains(err.Error(), pass) {
		t.Errorf("error %q contains the password", err)
	}
	// Credentials in the URL are refused, and not repeated.
	withUser := strings.Replace(h.URL(), "https://", "https://"+user+":"+pass+"@", 1)
	_, err = FetchIndex(ctx, withUser, acc)
	if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), pass) {
		t.Errorf("URL with credentials: %v, want ErrInvalid without the password", err)
	}
}

func TestHelmTLSAndPlainHTTP(t *testing.T) {
	ctx := context.Background()
	h, _ := webRepo(t)

	// A private CA is trusted only when given.
	_, err := FetchIndex(ctx, h.URL(), Access{})
	if err == nil || !strings.Contains(err.Error(), "certificate") || retry.IsTransient(err) {
		t.Errorf("without the CA: %v, want a permanent certificate error", err)
	}
	if _, err := FetchIndex(ctx, h.URL(), Access{CAPEM: []byte("not PEM")}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a CA bundle without certificates: %v, want ErrInvalid", err)
	}

	plain := newHelmRepo(t, false)
	archive := chartArchive(t, "web", "1.0.0", nil)
	plain.add(t, "web", "1.0.0", "web-1.0.0.tgz", "", false, archive)
	rev := Revision{"1.0.0", "sha256:" + sha(archive)}

	_, err = FetchIndex(ctx, plain.URL(), Access{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "http:// sends the chart in the clear; set insecure: true to allow it") {
		t.Errorf("http:// without insecure: %v", err)
	}
	_, err = FetchChart(ctx, plain.URL(), "web", rev, Access{Insecure: true, Username: "u", Password: "p4ss"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "credentials are not sent over plain HTTP") {
		t.Errorf("credentials over http://: %v", err)
	}
	for _, a := range plain.seen() {
		if a != "" {
			t.Errorf("the plain HTTP server received Authorization %q", a)
		}
	}
	if _, err := FetchChart(ctx, plain.URL(), "web", rev, Access{Insecure: true}); err != nil {
		t.Errorf("http:// with insecure: %v", err)
	}

	// An https:// URL whose server speaks plain HTTP only.
	httpsURL := strings.Replace(plain.URL(), "http://", "https://", 1)
	_, err = FetchIndex(ctx, httpsURL, Access{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "the server answers plain HTTP only; set insecure: true") {
		t.Errorf("https:// to a plain HTTP server: %v", err)
	}
}

func TestFetchIndexRefusesWhatIsNotAnIndex(t *testing.T) {
	ctx := context.Background()
	h := newHelmRepo(t, true)
	acc := Access{CAPEM: h.CAPEM()}
	if _, err := FetchIndex(ctx, h.URL(), acc); !errors.Is(err, ErrNotFound) {
		t.Errorf("no index.yaml: %v, want ErrNotFound", err)
	}
	h.replace("index.yaml", []byte("<html>not yaml: [</html>"))
	if _, err := FetchIndex(ctx, h.URL(), acc); !errors.Is(err, ErrInvalid) {
		t.Errorf("garbage index: %v, want ErrInvalid", err)
	}
	h.replace("index.yaml", []byte("entries: {}\n"))
	if _, err := FetchIndex(ctx, h.URL(), acc); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no apiVersion") {
		t.Errorf("index without apiVersion: %v", err)
	}
}
