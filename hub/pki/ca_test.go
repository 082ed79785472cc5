package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/testlog"
)

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestLoadOrCreateCACreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "pki")
	ca, err := LoadOrCreateCA(dir, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string]fs.FileMode{
		dir:                            0o700,
		filepath.Join(dir, CAKeyFile):  0o600,
		filepath.Join(dir, CACertFile): 0o644,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}

	cert := ca.cert
	if cert.Subject.CommonName != "Drover agent CA" {
		t.Errorf("CN = %q", cert.Subject.CommonName)
	}
	if !cert.IsCA || cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		t.Errorf("IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA with path length 0", cert.IsCA, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage = %b, want CertSign|CRLSign", cert.KeyUsage)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", cert.PublicKey)
	}
	if cert.NotAfter.Before(time.Now().Add(9 * 365 * 24 * time.Hour)) {
		t.Errorf("NotAfter = %v, want ten years ahead", cert.NotAfter)
	}
	stored, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, ca.CertPEM()) {
		t.Error("CertPEM differs from ca.crt")
	}
	if !ca.Pool().Equal(mustPool(t, stored)) {
		t.Error("Pool is not the CA certificate alone")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want ca.crt and ca.key only (no temporary files)", len(entries))
	}
}

func mustPool(t *testing.T, certPEM []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("no certificate in PEM")
	}
	return pool
}

func TestLoadOrCreateCAReloads(t *testing.T) {
	dir := t.TempDir()
	first, err := LoadOrCreateCA(dir, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	second, err := LoadOrCreateCA(dir, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CertPEM(), second.CertPEM()) {
		t.Fatal("second LoadOrCreateCA returned another certificate")
	}
	// Certificates the reloaded CA signs verify against the first one: the
	// same key, so registered agents stay valid across hub restarts.
	agent := agentCert(t, second, "edge-1", ecKey(t, elliptic.P256()))
	leaf, err := x509.ParseCertificate(agent.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: first.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate from the reloaded CA: %v", err)
	}
}

func TestLoadOrCreateCARefusesReadableKey(t *testing.T) {
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir, testlog.New(t)); err != nil {
				t.Fatal(err)
			}
			keyFile := filepath.Join(dir, CAKeyFile)
			if err := os.Chmod(keyFile, mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateCA(dir, testlog.New(t))
			if !errors.Is(err, ErrKeyFileMode) {
				t.Fatalf("err = %v, want ErrKeyFileMode", err)
			}
			if want := "chmod 600 " + keyFile; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		})
	}
}

func TestLoadOrCreateCARefusesHalfACA(t *testing.T) {
	for _, keep := range []string{CACertFile, CAKeyFile} {
		t.Run(keep, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir, testlog.New(t)); err != nil {
				t.Fatal(err)
			}
			gone := CAKeyFile
			if keep == CAKeyFile {
				gone = CACertFile
			}
			if err := os.Remove(filepath.Join(dir, gone)); err != nil {
				t.Fatal(err)
			}
			kept, err := os.ReadFile(filepath.Join(dir, keep))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := LoadOrCreateCA(dir, testlog.New(t)); err == nil {
				t.Fatal("LoadOrCreateCA made a new CA beside a lone " + keep)
			}
			after, err := os.ReadFile(filepath.Join(dir, keep))
			if err != nil || !bytes.Equal(after, kept) {
				t.Errorf("%s changed: %v", keep, err)
			}
			if _, err := os.Stat(filepath.Join(dir, gone)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s was recreated", gone)
			}
		})
	}
}

// operatorCA writes a CA certificate for key (edited by edit, when set) and
// the key in keyPEM to a new directory, returning the two paths.
func operatorCA(t *testing.T, key crypto.Signer, keyPEM []byte, edit func(*x509.Certificate)) (certFile, keyFile string) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Acme Drover CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "acme.crt"), filepath.Join(dir, "acme.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

func sec1(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("EC PRIVATE KEY", der)
}

func TestLoadCA(t *testing.T) {
	rsa2048 := rsaKey(t, 2048)
	p384 := ecKey(t, elliptic.P384())
	p256 := ecKey(t, elliptic.P256())
	// What `openssl ecparam -name secp384r1 -genkey` writes.
	withParams := append(pemBlock("EC PARAMETERS", []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}), sec1(t, p384)...)

	tests := []struct {
		name   string
		key    crypto.Signer
		keyPEM []byte
	}{
		{"RSA PKCS#1", rsa2048, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa2048))},
		{"RSA PKCS#8", rsa2048, pkcs8(t, rsa2048)},
		{"ECDSA SEC 1", p256, sec1(t, p256)},
		{"ECDSA SEC 1 after EC PARAMETERS", p384, withParams},
		{"ECDSA PKCS#8", p384, pkcs8(t, p384)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile, keyFile := operatorCA(t, tt.key, tt.keyPEM, nil)
			ca, err := LoadCA(certFile, keyFile)
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			name, err, read := handshake(t, ca, agentCert(t, ca, "edge-1", ecKey(t, elliptic.P256())))
			if err != nil || name != "edge-1" || read != "edge-1" {
				t.Fatalf("handshake: cluster %q, read %q, err %v", name, read, err)
			}
		})
	}
}

func TestLoadCARejects(t *testing.T) {
	key := ecKey(t, elliptic.P256())
	keyPEM := pkcs8(t, key)
	goodCert, goodKey := operatorCA(t, key, keyPEM, nil)
	otherKey := ecKey(t, elliptic.P256())
	rsa1024 := rsaKey(t, 1024)
	certPEM, err := os.ReadFile(goodCert)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	encrypted := pem.EncodeToMemory(&pem.Block{
		Type:    "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00000000000000000000000000000000"},
		Bytes:   []byte("ciphertext"),
	})
	notCA, notCAKey := operatorCA(t, key, keyPEM, func(c *x509.Certificate) { c.IsCA = false; c.KeyUsage = x509.KeyUsageDigitalSignature })
	noCertSign, noCertSignKey := operatorCA(t, key, keyPEM, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCRLSign })
	weak, weakKey := operatorCA(t, rsa1024, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa1024)), nil)

	tests := []struct {
		name, certFile, keyFile string
		// blame is the file the error must name.
		blame string
	}{
		{"key of another certificate", goodCert, write("other.key", pkcs8(t, otherKey)), "other.key"},
		{"not a CA", notCA, notCAKey, notCA},
		{"CA without keyCertSign", noCertSign, noCertSignKey, noCertSign},
		{"RSA 1024", weak, weakKey, weak},
		{"chain file", write("chain.crt", append(append([]byte(nil), certPEM...), certPEM...)), goodKey, "chain.crt"},
		{"certificate file holds a key", write("key-as.crt", keyPEM), goodKey, "key-as.crt"},
		{"garbage certificate", write("garbage.crt", []byte("garbage")), goodKey, "garbage.crt"},
		{"encrypted key", goodCert, write("enc.key", encrypted), "enc.key"},
		{"garbage key", goodCert, write("garbage.key", []byte("garbage")), "garbage.key"},
		{"certificate as key", goodCert, write("cert-as.key", certPEM), "cert-as.key"},
		{"missing certificate", filepath.Join(t.TempDir(), "missing.crt"), goodKey, "missing.crt"},
		{"missing key", goodCert, filepath.Join(t.TempDir(), "missing.key"), "missing.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := LoadCA(tt.certFile, tt.keyFile)
			if err == nil {
				t.Fatalf("LoadCA accepted it: %v", ca)
			}
			if !strings.Contains(err.Error(), tt.blame) {
				t.Errorf("error %q does not name %s", err, tt.blame)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Errorf("error quotes key material: %q", err)
			}
		})
	}
}
