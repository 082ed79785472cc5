package ctl_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
)

// testCAPEM is a self-signed CA certificate, PEM-encoded.
func testCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestRepositoryCA stores a CA bundle for an OCI registry on its own and
// with basic credentials for a Helm repository, and refuses what is not a
// bundle of certificates, or a CA with an SSH key.
func TestRepositoryCA(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	s := newSession(t, h)
	s.login()
	s.noRecord = true
	ca := s.writeFile("ca.pem", testCAPEM(t))
	notCA := s.writeFile("key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	garbage := s.writeFile("garbage.pem", "hello")
	key := s.writeFile("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
	hosts := s.writeFile("known_hosts", "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")

	if r := s.must("", "repo", "set", "oci://registry.example.com/charts/web", "--ca-file", ca); !strings.Contains(r.stdout, "CA bundle set") {
		t.Errorf("repo set --ca-file said %q", r.stdout)
	}
	if r := s.must("s3cret\n", "repo", "set", "https://charts.example.com", "--username", "u", "--password-stdin", "--ca-file", ca); !strings.Contains(r.stdout, "basic credentials and CA bundle set") {
		t.Errorf("repo set --username --ca-file said %q", r.stdout)
	}
	r := s.must("", "repo", "list")
	for _, want := range []string{"oci://registry.example.com/charts/web", "ca", "https://charts.example.com", "basic"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("repo list does not show %q:\n%s", want, r.stdout)
		}
	}
	if r := s.fails(1, "", "repo", "set", "oci://registry.example.com/x", "--ca-file", notCA); !strings.Contains(r.stderr, "only CERTIFICATE blocks belong in a CA bundle") {
		t.Errorf("a private key as the CA: %q", r.stderr)
	}
	if r := s.fails(1, "", "repo", "set", "oci://registry.example.com/x", "--ca-file", garbage); !strings.Contains(r.stderr, "not a bundle of PEM certificates") {
		t.Errorf("garbage as the CA: %q", r.stderr)
	}
	s.fails(2, "", "repo", "set", "ssh://git@git.example.com/fleet.git", "--ssh-key-file", key, "--known-hosts-file", hosts, "--ca-file", ca)
	if r := s.fails(1, "", "repo", "set", "oci://Registry.example.com/UPPER", "--ca-file", ca); !strings.Contains(r.stderr, "oci://HOST[:PORT]/PATH") {
		t.Errorf("a bad oci:// URL: %q", r.stderr)
	}
}

// TestDescribeHelmSource applies an application on a Helm repository
// (the test bed's, with its CA stored) and describes it: chart and version
// where a Git source shows ref and paths, and the release's revision
// shortened.
func TestDescribeHelmSource(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	s := newSession(t, h)
	s.login()
	s.noRecord = true
	repo := testbed.StartHelmRepo(t)
	repo.Add(t, map[string]string{"Chart.yaml": "apiVersion: v2\nname: web\nversion: 1.2.0\n"})
	s.must("", "repo", "set", repo.URL, "--ca-file", s.writeFile("ca.pem", string(repo.CAPEM)))
	s.must("", "apply", "-f", s.writeFile("web.yaml", `apiVersion: drover.dev/v1
kind: Application
metadata:
  name: web
spec:
  source:
    repoURL: `+repo.URL+`
    chart: web
    version: 1.x
  render:
    type: helm
  placement:
    clusterNames: [edge-1]
`))
	h.waitRelease(t, "web")
	r := s.must("", "describe", "app", "web")
	for _, want := range []string{"Chart:", "web", "Version:", "1.x", "1.2.0@sha256:"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe app does not show %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "(default branch)") {
		t.Errorf("describe app shows a Git ref for a Helm source:\n%s", r.stdout)
	}
}
