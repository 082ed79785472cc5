package gitwatch

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"

	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/drover-dev/drover/e2e/testbed"
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

	r := NewResolver("", testbed.Logger(t))
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
				if Retryable(re) {
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
	r := NewResolver("", testbed.Logger(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Resolve(context.Background(), tt.url, tt.creds, []string{"main"})
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
			if Retryable(err) != tt.retryable {
				t.Fatalf("Retryable(%v) = %v, want %v", err, Retryable(err), tt.retryable)
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

func TestPrepareSSH(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(block))
	hostPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	knownHosts := knownhosts.Line([]string{"git.example.com"}, hostPub)
	const url = "git@git.example.com:org/app.git"

	tests := []struct {
		name    string
		url     string
		creds   Credentials
		wantErr string
	}{
		{name: "valid", url: url, creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}},
		{name: "ssh URL with port", url: "ssh://git@git.example.com:2222/org/app.git", creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}},
		{name: "no key", url: url, creds: Credentials{SSHKnownHosts: knownHosts}, wantErr: "credentials.sshPrivateKey: required"},
		{name: "no known hosts", url: url, creds: Credentials{SSHPrivateKey: keyPEM}, wantErr: "credentials.sshKnownHosts: required"},
		{name: "bad key", url: url, creds: Credentials{SSHPrivateKey: "-----BEGIN SECRET-----\nnot-a-key\n", SSHKnownHosts: knownHosts}, wantErr: "credentials.sshPrivateKey:"},
		{name: "bad known hosts", url: url, creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: "git.example.com ssh-ed25519 !!!"}, wantErr: "credentials.sshKnownHosts:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, am, err := prepare(tt.url, tt.creds)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("prepare error = %v, want ErrInvalid with %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "not-a-key") || strings.Contains(err.Error(), "PRIVATE KEY") {
					t.Fatalf("error %q holds the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			keys, ok := am.(*gitssh.PublicKeys)
			if !ok || keys.User != "git" {
				t.Fatalf("auth = %#v, want *ssh.PublicKeys for user git", am)
			}
			cfg, err := keys.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			// The known host's key passes; any other key is refused and
			// classified as a host key error, never accepted.
			addr := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 22}
			if err := cfg.HostKeyCallback("git.example.com:22", addr, hostPub); err != nil {
				t.Fatalf("known host key refused: %v", err)
			}
			otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
			other, _ := ssh.NewPublicKey(otherPub)
			hkErr := cfg.HostKeyCallback("git.example.com:22", addr, other)
			if hkErr == nil {
				t.Fatal("an unknown host key was accepted")
			}
			rem, _ := parseRemote(tt.url)
			if err := wrapRemote("resolve", rem, tt.url, hkErr); !errors.Is(err, ErrHostKey) || Retryable(err) {
				t.Fatalf("host key mismatch classified as %v, want ErrHostKey", err)
			}
		})
	}
}

func TestWrapRemoteScrubs(t *testing.T) {
	// A server may quote anything in its answer; a secret in it must not
	// reach the error text.
	const secret = "tok-123456"
	raw := "https://user:" + secret + "@host/app.git"
	rem, err := parseRemote(raw)
	if err != nil {
		t.Fatal(err)
	}
	err = wrapRemote("resolve", rem, raw, errors.New("server said: "+raw+" and "+secret), Credentials{}.secrets(rem)...)
	if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "https://host/app.git") {
		t.Fatalf("error text %q", err)
	}
}
