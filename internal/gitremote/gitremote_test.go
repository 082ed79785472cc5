package gitremote

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://github.com/org/repo.git", "https://github.com/org/repo.git"},
		{"https://user:s3cret@github.com/org/repo.git", "https://github.com/org/repo.git"},
		{"https://ghp_token@github.com/org/repo", "https://github.com/org/repo"},
		{"https://user:s3cret@Git.Example.com:443/org/app.git/", "https://Git.Example.com:443/org/app.git/"},
		{"http://user:pa%40ss@127.0.0.1:8080/r.git", "http://127.0.0.1:8080/r.git"},
		{"https://host/repo?private_token=s3cret#frag", "https://host/repo"},
		{"ssh://git@host:2222/org/repo.git", "ssh://host:2222/org/repo.git"},
		{"ssh://git:s3cret@host/org/repo.git", "ssh://host/org/repo.git"},
		{"git@github.com:org/repo.git", "github.com:org/repo.git"},
		{"user:s3cret@host:org/repo", "host:org/repo"},
		{"host:org/repo", "host:org/repo"},
		// Unescaped "/" and "?" in a password make the URL unparseable, or
		// parse with the wrong host; everything up to the last "@" still
		// goes.
		{"https://user:s3/cret@host/repo", "https://host/repo"},
		{"https://user:s3?cret@host/repo", "https://host/repo"},
		{"https://us/er:s3/cret@host/app", "https://host/app"},
		{"https://user:s3cret@host:bad/repo", "https://host:bad/repo"},
		{"  https://user:s3cret@host/repo  ", "https://host/repo"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := RedactURL(tt.in)
			if got != tt.want {
				t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if strings.Contains(got, "s3") || strings.Contains(got, "token") {
				t.Errorf("RedactURL(%q) = %q still holds the secret", tt.in, got)
			}
		})
	}
}

// TestNormalizeURLKeys pins keys exactly: the agent's cache directories are
// named by their hashes, so a change re-fetches every cached repository.
func TestNormalizeURLKeys(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://user:tok@Git.Example.com:443/org/app.git/", "https://git.example.com/org/app"},
		{"https://tok@host/org/app?x=secret#frag", "https://host/org/app"},
		{"http://host:8080/app", "http://host:8080/app"},
		{"git@Host.com:org/app.git", "host.com:org/app"},
		{"ssh://git@host:22/org/app.git", "ssh://host/org/app"},
		{"ssh://git@[::1]:2222/app", "ssh://[::1]:2222/app"},
		// A password with an unescaped "/": go-git would dial host "us",
		// and the key follows it.
		{"https://us/er:pa/ss@host/app", "https://us/er:pa/ss@host/app"},
	}
	for _, tt := range tests {
		if got := NormalizeURL(tt.in); got != tt.want {
			t.Errorf("NormalizeURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNormalizeURL(t *testing.T) {
	same := []struct {
		name string
		urls []string
	}{
		{"https", []string{
			"https://git.example.com/org/app",
			"https://Git.Example.COM/org/app.git",
			"https://git.example.com/org/app/",
			"https://git.example.com/org/app.git/",
			"https://user:pw@git.example.com:443/org/app.git",
			"HTTPS://git.example.com/org/app",
		}},
		{"ssh", []string{
			"ssh://git@host/org/app.git",
			"ssh://host:22/org/app",
		}},
		{"scp", []string{
			"git@Host:org/app.git",
			"host:org/app",
			"other@host:org/app/",
		}},
	}
	for _, tt := range same {
		t.Run(tt.name, func(t *testing.T) {
			want := NormalizeURL(tt.urls[0])
			for _, u := range tt.urls[1:] {
				if got := NormalizeURL(u); got != want {
					t.Errorf("NormalizeURL(%q) = %q, want %q (as %q)", u, got, want, tt.urls[0])
				}
			}
		})
	}
	different := [][2]string{
		{"https://host/org/app", "https://host/org/app2"},
		{"https://host/org/app", "http://host/org/app"},
		{"https://host/org/app", "https://host:8443/org/app"},
		{"https://host/Org/app", "https://host/org/app"}, // paths are case-sensitive
		{"ssh://host/org/app", "host:org/app"},           // scp paths are relative to home
	}
	for _, d := range different {
		if NormalizeURL(d[0]) == NormalizeURL(d[1]) {
			t.Errorf("NormalizeURL(%q) == NormalizeURL(%q) = %q, want different", d[0], d[1], NormalizeURL(d[0]))
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in       string
		wantDial string
		wantSSH  bool
		wantHost string // for SSH, as host:port
		wantErr  string // substring; "" means valid
	}{
		{in: "https://host/org/app.git", wantDial: "https://host/org/app.git"},
		{in: "https://u:p@host/org/app.git", wantDial: "https://host/org/app.git"},
		{in: "HTTPS://host/org/app.git", wantDial: "https://host/org/app.git"},
		{in: "http://127.0.0.1:8080/app.git", wantDial: "http://127.0.0.1:8080/app.git"},
		{in: "git://host/app.git", wantErr: `scheme "git" is not supported`},
		{in: "ssh://git@host:2222/app.git", wantDial: "ssh://git@host:2222/app.git", wantSSH: true, wantHost: "host:2222"},
		{in: "ssh://git@[::1]/app.git", wantDial: "ssh://git@[::1]/app.git", wantSSH: true, wantHost: "[::1]:22"},
		{in: "git@github.com:org/app.git", wantDial: "git@github.com:org/app.git", wantSSH: true, wantHost: "github.com:22"},
		{in: "host:org/app", wantDial: "host:org/app", wantSSH: true, wantHost: "host:22"},
		{in: "git@host:app.git", wantDial: "git@host:app.git", wantSSH: true, wantHost: "host:22"},
		// The host is the one go-git dials, not what precedes the first ":".
		{in: "user:s3cret@host:org/app.git", wantErr: "must not carry a password"},
		{in: "C:\\repos\\app", wantErr: "local paths are not allowed"},
		{in: "", wantErr: "must not be empty"},
		{in: "file:///etc", wantErr: `scheme "file" is not supported`},
		{in: "/var/lib/drover", wantErr: "local paths are not allowed"},
		{in: "./repo", wantErr: "local paths are not allowed"},
		{in: "ftp://user:s3cret@host/app", wantErr: `scheme "ftp" is not supported`},
		{in: "https:///app", wantErr: "has no host"},
		{in: "https://host/a b", wantErr: "must not contain whitespace"},
		{in: "https://host/a\u00a0b", wantErr: "must not contain whitespace"},
		{in: " https://host/app", wantErr: "must not contain whitespace"},
		{in: "ssh://git:s3cret@host/app.git", wantErr: "must not carry a password"},
		{in: "https://user:s3cret@host:bad/app", wantErr: "not a valid URL"},
		{in: "ssh://-oProxyCommand=x/r.git", wantErr: "host must not start with '-'"},
		{in: "-oProxyCommand=touch:x/r.git", wantErr: "not a valid host name"},
		{in: "git@github.com:", wantErr: "not a supported repository URL"},
		{in: "ext::sh -c x", wantErr: "must not contain whitespace"},
		{in: "ext::evil", wantErr: "not a supported repository URL"},
		{in: "git@github.com:-u/r.git", wantErr: "must not start with '-'"},
		{in: "a_b!@github.com:org/r.git", wantErr: "user in user@host:path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want ErrInvalid with %q", tt.in, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error %q holds the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if r.Dial != tt.wantDial || r.SSH != tt.wantSSH {
				t.Fatalf("Parse(%q) = dial %q ssh %v, want %q %v", tt.in, r.Dial, r.SSH, tt.wantDial, tt.wantSSH)
			}
			if r.SSH && net.JoinHostPort(r.host, r.port) != tt.wantHost {
				t.Fatalf("Parse(%q) host %q port %q, want %s", tt.in, r.host, r.port, tt.wantHost)
			}
			if r.Redacted != RedactURL(tt.in) || r.Key != NormalizeURL(tt.in) || fmt.Sprint(r) != r.Redacted {
				t.Fatalf("Parse(%q) = redacted %q key %q, printed %v", tt.in, r.Redacted, r.Key, r)
			}
		})
	}
}

func TestAuthHTTP(t *testing.T) {
	tests := []struct {
		name     string
		url      string
		creds    Credentials
		wantUser string // "" means anonymous (nil auth)
		wantPass string
		wantErr  string
	}{
		{name: "anonymous", url: "https://host/app.git"},
		{name: "credentials", url: "https://host/app.git", creds: Credentials{Username: "u", Password: "p"}, wantUser: "u", wantPass: "p"},
		{name: "token only", url: "https://host/app.git", creds: Credentials{Password: "tok"}, wantUser: "git", wantPass: "tok"},
		{name: "from URL", url: "https://u:p@host/app.git", wantUser: "u", wantPass: "p"},
		{name: "token in URL user", url: "https://tok@host/app.git", wantUser: "tok"},
		{name: "credentials win over URL", url: "https://u:wrong@host/app.git", creds: Credentials{Username: "v", Password: "right"}, wantUser: "v", wantPass: "right"},
		{name: "ssh key for https", url: "https://host/app.git", creds: Credentials{SSHPrivateKey: "key"}, wantErr: "credentials: an SSH key"},
		{name: "known hosts for https", url: "https://host/app.git", creds: Credentials{SSHKnownHosts: "host ssh-ed25519 AAAA"}, wantErr: "credentials: an SSH key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			am, err := r.Auth(tt.creds)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Auth error = %v, want ErrInvalid with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantUser == "" {
				if am != nil {
					t.Fatalf("Auth = %#v, want none", am)
				}
				return
			}
			basic, ok := am.(*githttp.BasicAuth)
			if !ok || basic.Username != tt.wantUser || basic.Password != tt.wantPass {
				t.Fatalf("Auth = %#v, want basic auth %s:%s", am, tt.wantUser, tt.wantPass)
			}
		})
	}
}

func TestAuthSSH(t *testing.T) {
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
		name     string
		url      string
		creds    Credentials
		wantUser string
		wantErr  string
	}{
		{name: "valid", url: url, creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}, wantUser: "git"},
		{name: "ssh URL with port", url: "ssh://git@git.example.com:2222/org/app.git", creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}, wantUser: "git"},
		{name: "user from credentials", url: "git.example.com:org/app.git", creds: Credentials{Username: "deploy", SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}, wantUser: "deploy"},
		{name: "URL user wins", url: "ops@git.example.com:org/app.git", creds: Credentials{Username: "deploy", SSHPrivateKey: keyPEM, SSHKnownHosts: knownHosts}, wantUser: "ops"},
		{name: "no key", url: url, creds: Credentials{SSHKnownHosts: knownHosts}, wantErr: "credentials.sshPrivateKey: required"},
		{name: "no known hosts", url: url, creds: Credentials{SSHPrivateKey: keyPEM}, wantErr: "credentials.sshKnownHosts: required"},
		{name: "blank known hosts", url: url, creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: " \n"}, wantErr: "credentials.sshKnownHosts: required"},
		{name: "bad key", url: url, creds: Credentials{SSHPrivateKey: "-----BEGIN SECRET-----\nnot-a-key\n", SSHKnownHosts: knownHosts}, wantErr: "credentials.sshPrivateKey:"},
		{name: "bad known hosts", url: url, creds: Credentials{SSHPrivateKey: keyPEM, SSHKnownHosts: "git.example.com ssh-ed25519 !!!"}, wantErr: "credentials.sshKnownHosts:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			am, err := r.Auth(tt.creds)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Auth error = %v, want ErrInvalid with %q", err, tt.wantErr)
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
			if !ok || keys.User != tt.wantUser {
				t.Fatalf("auth = %#v, want *ssh.PublicKeys for user %s", am, tt.wantUser)
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
			if kind := Classify(fmt.Errorf("dial: %w", hkErr)); kind != ErrHostKey {
				t.Fatalf("Classify(host key mismatch) = %v, want ErrHostKey", kind)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want error
	}{
		{transport.ErrAuthenticationRequired, ErrAuth},
		{fmt.Errorf("list: %w", transport.ErrAuthorizationFailed), ErrAuth},
		{transport.ErrInvalidAuthMethod, ErrAuth},
		{&knownhosts.RevokedError{}, ErrHostKey},
		{transport.ErrRepositoryNotFound, ErrRepoNotFound},
		{context.Canceled, nil},
		{fmt.Errorf("fetch: %w", context.DeadlineExceeded), nil},
		{errors.New("connection refused"), nil},
		{nil, nil},
	}
	for _, tt := range tests {
		if got := Classify(tt.err); got != tt.want {
			t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestScrub(t *testing.T) {
	// A server may quote anything in its answer; no secret may reach the
	// error text, in any of the forms a URL may hold it.
	tests := []struct {
		name    string
		url     string
		creds   Credentials
		msg     string
		want    string
		secrets []string // must not appear in the result
	}{
		{
			name: "URL password and raw URL", url: "https://user:tok-123456@host/app.git",
			msg:  "server said: https://user:tok-123456@host/app.git and tok-123456",
			want: "server said: https://host/app.git and [redacted]", secrets: []string{"tok-123456"},
		},
		{
			name: "credentials, escaped", url: "https://host/app.git", creds: Credentials{Username: "u", Password: "p@ss/w rd"},
			msg:  "got p%40ss%2Fw+rd and p@ss%2Fw%20rd and p@ss/w rd",
			want: "got [redacted] and [redacted] and [redacted]", secrets: []string{"p@ss", "p%40ss"},
		},
		{
			name: "token as URL user", url: "https://ghp_tokentoken@host/app.git",
			msg:  `Get "https://ghp_tokentoken@host/app.git/info/refs": EOF`,
			want: `Get "https://host/app.git/info/refs": EOF`, secrets: []string{"ghp_tokentoken"},
		},
		{
			name: "short user names stay", url: "https://git:tok-123456@host/app.git",
			msg: "git-upload-pack: tok-123456", want: "git-upload-pack: [redacted]", secrets: []string{"tok-123456"},
		},
		{
			name: "private key", url: "git@host:app.git", creds: Credentials{SSHPrivateKey: "KEY-MATERIAL"},
			msg: "bad KEY-MATERIAL", want: "bad [redacted]", secrets: []string{"KEY-MATERIAL"},
		},
		{
			name: "empty server reason", url: "https://host/app.git",
			msg: "repository not found: \n", want: "repository not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			got := Scrub(tt.msg, tt.url, r.Redacted, r.Secrets(tt.creds))
			if got != tt.want {
				t.Errorf("Scrub = %q, want %q", got, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(got, s) {
					t.Errorf("Scrub = %q holds %q", got, s)
				}
			}
		})
	}
}
