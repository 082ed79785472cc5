package gitwatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/transport"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
	"github.com/drover-dev/drover/internal/testlog"
)

func TestResolve(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "org/apps")
	c1 := repo.Commit(t, "first", map[string]string{"a.yaml": "a: 1\n"})
	c2 := repo.Commit(t, "second", map[string]string{"a.yaml": "a: 2\n"})
	repo.Tag(t, "v1", c1)
	repo.AnnotatedTag(t, "v1.1-annotated", c1, "release 1.1")
	repo.Branch(t, "release", c1)
	repo.Branch(t, "dup", c1)
	repo.Tag(t, "dup", c2)

	tests := []struct {
		ref     string
		want    string
		wantErr error
	}{
		{ref: "", want: c2},
		{ref: "HEAD", want: c2},
		{ref: "main", want: c2},
		{ref: "refs/heads/main", want: c2},
		{ref: "release", want: c1},
		{ref: "v1", want: c1},
		{ref: "refs/tags/v1", want: c1},
		{ref: "v1.1-annotated", want: c1},
		{ref: "refs/tags/v1.1-annotated", want: c1},
		{ref: c1, want: c1},
		{ref: strings.ToUpper(c2), want: c2},
		{ref: "refs/heads/dup", want: c1},
		{ref: "refs/tags/dup", want: c2},
		{ref: "dup", wantErr: ErrAmbiguousRef},
		{ref: "nope", wantErr: ErrRefNotFound},
		{ref: "refs/heads/nope", wantErr: ErrRefNotFound},
		{ref: c1[:12], wantErr: ErrRefNotFound},
		{ref: "a..b", wantErr: ErrInvalid},
		{ref: "v1^{}", wantErr: ErrInvalid},
		{ref: strings.Repeat("0", 40), wantErr: ErrInvalid},
	}
	refs := make([]string, len(tests))
	for i, tt := range tests {
		refs[i] = tt.ref
	}

	r := NewResolver("", testlog.New(t))
	before := repo.Requests()
	got, err := r.Resolve(context.Background(), repo.URL, Credentials{}, refs)
	if n := repo.Requests() - before; n != 1 {
		t.Errorf("Resolve of %d refs made %d requests, want 1 (one ls-remote)", len(refs), n)
	}
	var refErrs RefErrors
	if !errors.As(err, &refErrs) {
		t.Fatalf("Resolve error = %v, want RefErrors", err)
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			re := refErrs.For(tt.ref)
			if tt.wantErr != nil {
				if re == nil || !errors.Is(re, tt.wantErr) {
					t.Fatalf("ref %q: error %v, want %v", tt.ref, re, tt.wantErr)
				}
				if _, ok := got[tt.ref]; ok {
					t.Fatalf("ref %q: resolved to %q despite its error", tt.ref, got[tt.ref])
				}
				if retry.IsTransient(re) {
					t.Fatalf("ref %q: error %v is retryable", tt.ref, re)
				}
				return
			}
			if re != nil {
				t.Fatalf("ref %q: %v", tt.ref, re)
			}
			if got[tt.ref] != tt.want {
				t.Fatalf("ref %q = %q, want %q", tt.ref, got[tt.ref], tt.want)
			}
		})
	}
}

func TestResolveSHAsNeedNoRemote(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "app")
	c1 := repo.Commit(t, "first", nil)

	got, err := NewResolver("", nil).Resolve(context.Background(), repo.URL, Credentials{}, []string{c1})
	if err != nil {
		t.Fatal(err)
	}
	if got[c1] != c1 {
		t.Fatalf("Resolve(%s) = %v", c1, got)
	}
	if n := repo.Requests(); n != 0 {
		t.Fatalf("resolving a full SHA made %d requests, want 0", n)
	}
}

func TestResolveEmptyRepository(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "empty")
	_, err := NewResolver("", nil).Resolve(context.Background(), repo.URL, Credentials{}, []string{"", "main"})
	var refErrs RefErrors
	if !errors.As(err, &refErrs) || len(refErrs) != 2 || !errors.Is(err, ErrRefNotFound) {
		t.Fatalf("Resolve on an empty repository: %v, want ErrRefNotFound for both refs", err)
	}
}

func TestResolveRemoteErrors(t *testing.T) {
	const password = "s3cret-Passw0rd"
	open := testbed.GitServer(t)
	openRepo := open.CreateRepo(t, "app")
	openRepo.Commit(t, "first", nil)
	locked := testbed.GitServer(t, testbed.WithBasicAuth("drover", password))
	lockedRepo := locked.CreateRepo(t, "app")
	want := lockedRepo.Commit(t, "first", nil)
	withUser := func(userinfo string) string {
		return strings.Replace(lockedRepo.URL, "http://", "http://"+userinfo+"@", 1)
	}

	// A port nothing listens on: the connection is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String() + "/app.git"
	l.Close()

	tests := []struct {
		name      string
		url       string
		creds     Credentials
		wantErr   error // nil: resolves
		retryable bool
	}{
		{name: "right password", url: lockedRepo.URL, creds: Credentials{Username: "drover", Password: password}},
		{name: "password in URL", url: withUser("drover:" + password)},
		{name: "credentials win over URL", url: withUser("drover:wrong"), creds: Credentials{Username: "drover", Password: password}},
		{name: "wrong password", url: lockedRepo.URL, creds: Credentials{Username: "drover", Password: "wrong-" + password}, wantErr: ErrAuth},
		{name: "wrong password in URL", url: withUser("drover:wrong-" + password), wantErr: ErrAuth},
		{name: "no credentials", url: lockedRepo.URL, wantErr: ErrAuth},
		{name: "no such repository", url: open.URL + "/missing.git", wantErr: ErrNotFound},
		{name: "connection refused", url: refused, wantErr: errAny, retryable: true},
		{name: "ssh key for https", url: openRepo.URL, creds: Credentials{SSHPrivateKey: "key"}, wantErr: ErrInvalid},
		{name: "local path", url: "/etc", wantErr: ErrInvalid},
	}
	r := NewResolver("", testlog.New(t))
	dials := testbed.WatchGitDials(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialled := len(dials.To(tt.url))
			got, err := r.Resolve(context.Background(), tt.url, tt.creds, []string{"main"})
			// Nothing invalid is worth a connection.
			if d := dials.To(tt.url)[dialled:]; tt.wantErr == ErrInvalid && len(d) > 0 {
				t.Errorf("refused as invalid after go-git was asked to connect to %v", d)
			}
			if tt.wantErr == nil {
				if err != nil || got["main"] != want {
					t.Fatalf("Resolve = %v, %v; want main = %s", got, err, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Resolve = %v, want an error", got)
			}
			t.Logf("error: %v", err)
			if tt.wantErr != errAny && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Resolve error = %v, want %v", err, tt.wantErr)
			}
			if retry.IsTransient(err) != tt.retryable {
				t.Fatalf("retry.IsTransient(%v) = %v, want %v", err, retry.IsTransient(err), tt.retryable)
			}
			if msg := err.Error(); strings.Contains(msg, password) || strings.Contains(msg, "drover:") {
				t.Fatalf("error text holds a credential: %q", msg)
			}
			if !strings.Contains(err.Error(), RedactURL(tt.url)) {
				t.Fatalf("error %q does not name the repository %s", err, RedactURL(tt.url))
			}
		})
	}
}

// errAny in a test table: any error will do.
var errAny = errors.New("any error")

// TestWrapRemoteScrubs checks that a remote error keeps its classification
// and loses its secrets (gitremote's tests cover the scrubbing itself).
func TestWrapRemoteScrubs(t *testing.T) {
	const secret = "tok-123456"
	raw := "https://user:" + secret + "@host/app.git"
	rem, err := gitremote.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	cause := fmt.Errorf("server said: %s and %s: %w", raw, secret, transport.ErrAuthenticationRequired)
	err = wrapRemote("resolve", rem, raw, cause, rem.Secrets(Credentials{}))
	if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "resolve https://host/app.git: ") {
		t.Fatalf("error text %q", err)
	}
	if !errors.Is(err, ErrAuth) || !errors.Is(err, transport.ErrAuthenticationRequired) || retry.IsTransient(err) {
		t.Fatalf("error %v: want ErrAuth wrapping the cause, not retryable", err)
	}
}
