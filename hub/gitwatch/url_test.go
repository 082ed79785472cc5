package gitwatch

import (
	"errors"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://github.com/org/repo.git", "https://github.com/org/repo.git"},
		{"https://user:s3cret@github.com/org/repo.git", "https://github.com/org/repo.git"},
		{"https://ghp_token@github.com/org/repo", "https://github.com/org/repo"},
		{"http://user:pa%40ss@127.0.0.1:8080/r.git", "http://127.0.0.1:8080/r.git"},
		{"https://host/repo?private_token=s3cret#frag", "https://host/repo"},
		{"ssh://git@host:2222/org/repo.git", "ssh://host:2222/org/repo.git"},
		{"ssh://git:s3cret@host/org/repo.git", "ssh://host/org/repo.git"},
		{"git@github.com:org/repo.git", "github.com:org/repo.git"},
		{"user:s3cret@host:org/repo", "host:org/repo"},
		{"host:org/repo", "host:org/repo"},
		// Unescaped "/" and "?" in a password make the URL unparseable;
		// everything up to the last "@" still goes.
		{"https://user:s3/cret@host/repo", "https://host/repo"},
		{"https://user:s3?cret@host/repo", "https://host/repo"},
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

func TestParseRemote(t *testing.T) {
	tests := []struct {
		in       string
		wantDial string
		wantSSH  bool
		wantErr  string // substring; "" means valid
	}{
		{in: "https://host/org/app.git", wantDial: "https://host/org/app.git"},
		{in: "https://u:p@host/org/app.git", wantDial: "https://host/org/app.git"},
		{in: "http://127.0.0.1:8080/app.git", wantDial: "http://127.0.0.1:8080/app.git"},
		{in: "git://host/app.git", wantDial: "git://host/app.git"},
		{in: "ssh://git@host:2222/app.git", wantDial: "ssh://git@host:2222/app.git", wantSSH: true},
		{in: "git@github.com:org/app.git", wantDial: "git@github.com:org/app.git", wantSSH: true},
		{in: "host:org/app", wantDial: "host:org/app", wantSSH: true},
		{in: "git@host:app.git", wantDial: "git@host:app.git", wantSSH: true},
		{in: "user:s3cret@host:org/app.git", wantErr: "must not carry a password"},
		{in: "C:\\repos\\app", wantErr: "local paths are not allowed"},
		{in: "", wantErr: "repoURL: must not be empty"},
		{in: "file:///etc", wantErr: `scheme "file" is not supported`},
		{in: "/var/lib/drover", wantErr: "local paths are not allowed"},
		{in: "./repo", wantErr: "local paths are not allowed"},
		{in: "ftp://host/app", wantErr: `scheme "ftp" is not supported`},
		{in: "https:///app", wantErr: "has no host"},
		{in: "https://host/a b", wantErr: "must not contain spaces"},
		{in: "ssh://git:s3cret@host/app.git", wantErr: "must not carry a password"},
		{in: "https://user:s3cret@host:bad/app", wantErr: "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := parseRemote(tt.in)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseRemote(%q) error = %v, want ErrInvalid with %q", tt.in, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error %q holds the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRemote(%q): %v", tt.in, err)
			}
			if r.dial != tt.wantDial || r.ssh != tt.wantSSH {
				t.Fatalf("parseRemote(%q) = dial %q ssh %v, want %q %v", tt.in, r.dial, r.ssh, tt.wantDial, tt.wantSSH)
			}
		})
	}
}
