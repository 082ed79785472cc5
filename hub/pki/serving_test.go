package pki

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/testlog"
)

func TestIssueServingCert(t *testing.T) {
	ca := newTestCA(t)
	cert, err := ca.IssueServingCert([]string{"127.0.0.1", "::1", "Hub.Example.com", "*.hubs.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("extended key usage = %v, want server auth only", leaf.ExtKeyUsage)
	}
	for _, host := range []string{"127.0.0.1", "::1", "hub.example.com", "a.hubs.example.com"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	for _, host := range []string{"10.0.0.1", "other.example.com", "hubs.example.com"} {
		if err := leaf.VerifyHostname(host); err == nil {
			t.Errorf("certificate covers %s too", host)
		}
	}
	if !publicKeysEqual(cert.PrivateKey.(crypto.Signer).Public(), leaf.PublicKey) {
		t.Error("private key does not match the certificate")
	}
}

func TestIssueServingCertRejectsHosts(t *testing.T) {
	ca := newTestCA(t)
	tests := []struct {
		name  string
		hosts []string
		field string
	}{
		{"none", nil, "hosts"},
		{"empty", []string{"hub.example.com", ""}, "hosts[1]"},
		{"host and port", []string{"hub.example.com:8443"}, "hosts[0]"},
		{"URL", []string{"https://hub.example.com"}, "hosts[0]"},
		{"underscore", []string{"hub_1.example.com"}, "hosts[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.IssueServingCert(tt.hosts, time.Hour)
			if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
				t.Fatalf("err = %v, want an error about %s", err, tt.field)
			}
		})
	}
}

func readServingFiles(t *testing.T, dir string) (certPEM []byte) {
	t.Helper()
	certPEM, err := os.ReadFile(filepath.Join(dir, ServingCertFile))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{
		filepath.Join(dir, ServingKeyFile):  0o600,
		filepath.Join(dir, ServingCertFile): 0o644,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}
	return certPEM
}

func leafPEM(cert tls.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw})
}

func TestLoadOrCreateServingCert(t *testing.T) {
	ca := newTestCA(t)
	hosts := []string{"127.0.0.1", "hub.example.com"}

	t.Run("reuses what covers the hosts", func(t *testing.T) {
		dir := t.TempDir()
		first, err := ca.LoadOrCreateServingCert(dir, hosts, testlog.New(t))
		if err != nil {
			t.Fatal(err)
		}
		stored := readServingFiles(t, dir)
		if !bytes.Equal(stored, leafPEM(first)) {
			t.Fatal("stored certificate is not the one returned")
		}
		for _, again := range [][]string{hosts, {"hub.example.com"}} {
			got, err := ca.LoadOrCreateServingCert(dir, again, testlog.New(t))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Leaf.Raw, first.Leaf.Raw) {
				t.Errorf("hosts %v: a new certificate, want the stored one reused", again)
			}
		}
	})

	// Each case starts from a stored certificate the call must replace.
	tests := []struct {
		name  string
		store func(t *testing.T, dir string)
		hosts []string
		ca    *CA
	}{
		{
			name:  "new host",
			store: func(t *testing.T, dir string) { mustServing(t, ca, dir, hosts, time.Hour*24*365) },
			hosts: append([]string{"hub2.example.com"}, hosts...),
		},
		{
			name:  "expires within 30 days",
			store: func(t *testing.T, dir string) { mustServing(t, ca, dir, hosts, 29*24*time.Hour) },
		},
		{
			name:  "signed by another CA",
			store: func(t *testing.T, dir string) { mustServing(t, newTestCA(t), dir, hosts, 365*24*time.Hour) },
		},
		{
			name: "key and certificate do not match",
			store: func(t *testing.T, dir string) {
				mustServing(t, ca, dir, hosts, 365*24*time.Hour)
				keep, err := os.ReadFile(filepath.Join(dir, ServingCertFile))
				if err != nil {
					t.Fatal(err)
				}
				mustServing(t, ca, dir, hosts, 365*24*time.Hour)
				if err := os.WriteFile(filepath.Join(dir, ServingCertFile), keep, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "certificate file missing",
			store: func(t *testing.T, dir string) {
				mustServing(t, ca, dir, hosts, 365*24*time.Hour)
				if err := os.Remove(filepath.Join(dir, ServingCertFile)); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "garbage",
			store: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, ServingCertFile), []byte("garbage"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, ServingKeyFile), []byte("garbage"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.store(t, dir)
			before, _ := os.ReadFile(filepath.Join(dir, ServingCertFile))
			want := tt.hosts
			if want == nil {
				want = hosts
			}
			got, err := ca.LoadOrCreateServingCert(dir, want, testlog.New(t))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got.Leaf.Raw, certDER(before)) {
				t.Fatal("stored certificate reused")
			}
			if !bytes.Equal(readServingFiles(t, dir), leafPEM(got)) {
				t.Error("new certificate not stored")
			}
			for _, h := range want {
				if _, err := got.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: h}); err != nil {
					t.Errorf("%s: %v", h, err)
				}
			}
			if got.Leaf.NotAfter.Before(time.Now().Add(300 * 24 * time.Hour)) {
				t.Errorf("NotAfter = %v, want about a year ahead", got.Leaf.NotAfter)
			}
		})
	}
}

func TestLoadOrCreateServingCertRefusesReadableKey(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	if _, err := ca.LoadOrCreateServingCert(dir, []string{"127.0.0.1"}, testlog.New(t)); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, ServingKeyFile)
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	keyBefore, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.LoadOrCreateServingCert(dir, []string{"127.0.0.1"}, testlog.New(t))
	if !errors.Is(err, ErrKeyFileMode) || !strings.Contains(err.Error(), "chmod 600 "+keyFile) {
		t.Fatalf("err = %v, want ErrKeyFileMode saying chmod 600 %s", err, keyFile)
	}
	if keyAfter, _ := os.ReadFile(keyFile); !bytes.Equal(keyAfter, keyBefore) {
		t.Error("refused key was replaced")
	}
}

// mustServing stores a serving certificate from ca in dir, as an earlier
// run of the hub would have.
func mustServing(t *testing.T, ca *CA, dir string, hosts []string, validity time.Duration) {
	t.Helper()
	cert, err := ca.IssueServingCert(hosts, validity)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ServingKeyFile), pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ServingCertFile), leafPEM(cert), 0o644); err != nil {
		t.Fatal(err)
	}
}

func certDER(certPEM []byte) []byte {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil
	}
	return block.Bytes
}
