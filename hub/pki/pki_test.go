package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/testlog"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir(), testlog.New(t))
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca
}

func ecKey(t *testing.T, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func ed25519Key(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// makeCSR returns a PEM CSR for commonName signed by key; edit, when set,
// changes the request before it is signed.
func makeCSR(t *testing.T, key crypto.Signer, commonName string, edit func(*x509.CertificateRequest)) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// agentCert registers cluster name with ca the way an agent does: its own
// key, a CSR, the signed certificate.
func agentCert(t *testing.T, ca *CA, name string, key crypto.Signer) tls.Certificate {
	t.Helper()
	certPEM, _, _, err := ca.SignAgentCSR(makeCSR(t, key, name, nil), name, time.Hour)
	if err != nil {
		t.Fatalf("SignAgentCSR: %v", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("SignAgentCSR returned no PEM certificate: %q", certPEM)
	}
	return tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// handshake runs one mutual-TLS connection over loopback: a server that
// requires client certificates from ca (as the hub's Connect endpoint does)
// and a client presenting client. It returns what the server made of the
// client (the cluster name, or its handshake error) and what the client
// read back.
func handshake(t *testing.T, ca *CA, client tls.Certificate) (name string, serverErr error, clientRead string) {
	t.Helper()
	serving, err := ca.IssueServingCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatalf("IssueServingCert: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		// A safety net against a hang, not a timing assertion.
		conn.SetDeadline(time.Now().Add(time.Minute))
		tc := tls.Server(conn, &tls.Config{
			Certificates: []tls.Certificate{serving},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.Pool(),
			MinVersion:   tls.VersionTLS13,
		})
		defer tc.Close()
		if err := tc.HandshakeContext(t.Context()); err != nil {
			done <- result{err: err}
			return
		}
		name, err := ClusterName(tc.ConnectionState().VerifiedChains[0][0])
		if err == nil {
			_, err = io.WriteString(tc, name)
		}
		done <- result{name: name, err: err}
	}()

	dialer := &tls.Dialer{Config: &tls.Config{
		RootCAs:      ca.Pool(),
		Certificates: []tls.Certificate{client},
		MinVersion:   tls.VersionTLS13,
	}}
	conn, err := dialer.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err == nil {
		conn.SetDeadline(time.Now().Add(time.Minute))
		// With TLS 1.3 the client finishes its handshake before the
		// server has checked its certificate; a refusal arrives here, as
		// the server's alert, and the read fails.
		b, _ := io.ReadAll(conn)
		clientRead = string(b)
		conn.Close()
	}
	r := <-done
	return r.name, r.err, clientRead
}

func TestAgentHandshake(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	past := *ca
	past.now = func() time.Time { return time.Now().Add(-48 * time.Hour) }

	serving, err := ca.IssueServingCert([]string{"edge-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	refusedAs := func(reason x509.InvalidReason) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			var invalid x509.CertificateInvalidError
			if !errors.As(err, &invalid) || invalid.Reason != reason {
				t.Fatalf("server error = %v, want a certificate refused with reason %d", err, reason)
			}
		}
	}
	tests := []struct {
		name   string
		client tls.Certificate
		// refused checks the server's error; nil means the client must be
		// accepted as cluster edge-1.
		refused func(*testing.T, error)
	}{
		{name: "ECDSA agent key", client: agentCert(t, ca, "edge-1", ecKey(t, elliptic.P256()))},
		{name: "RSA agent key", client: agentCert(t, ca, "edge-1", rsaKey(t, 2048))},
		{name: "Ed25519 agent key", client: agentCert(t, ca, "edge-1", ed25519Key(t))},
		{
			name:   "certificate from another CA",
			client: agentCert(t, other, "edge-1", ecKey(t, elliptic.P256())),
			refused: func(t *testing.T, err error) {
				var unknown x509.UnknownAuthorityError
				if !errors.As(err, &unknown) {
					t.Fatalf("server error = %v, want x509.UnknownAuthorityError", err)
				}
			},
		},
		{
			name:    "expired certificate",
			client:  agentCert(t, &past, "edge-1", ecKey(t, elliptic.P256())),
			refused: refusedAs(x509.Expired),
		},
		{
			name:    "serving certificate used as a client certificate",
			client:  serving,
			refused: refusedAs(x509.IncompatibleUsage),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, err, read := handshake(t, ca, tt.client)
			if tt.refused != nil {
				tt.refused(t, err)
				if read != "" {
					t.Errorf("refused client read %q from the server", read)
				}
				return
			}
			if err != nil {
				t.Fatalf("server: %v", err)
			}
			if name != "edge-1" || read != "edge-1" {
				t.Fatalf("server saw cluster %q, client read %q; want edge-1 for both", name, read)
			}
		})
	}
}

func TestSignAgentCSR(t *testing.T) {
	ca := newTestCA(t)
	key := ecKey(t, elliptic.P256())
	before := time.Now()
	certPEM, serial, notAfter, err := ca.SignAgentCSR(makeCSR(t, key, "edge-1", nil), "edge-1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}

	if cert.Subject.CommonName != "edge-1" || len(cert.Subject.Organization) != 1 ||
		cert.Subject.Organization[0] != ClusterOrganization {
		t.Errorf("subject = %v, want CN=edge-1,O=%s", cert.Subject, ClusterOrganization)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("extended key usage = %v, want client auth only", cert.ExtKeyUsage)
	}
	if cert.IsCA {
		t.Error("agent certificate is a CA")
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.URIs)+len(cert.EmailAddresses) != 0 {
		t.Errorf("agent certificate has SANs: %v %v %v %v", cert.DNSNames, cert.IPAddresses, cert.URIs, cert.EmailAddresses)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	if !cert.NotBefore.Before(before) {
		t.Errorf("NotBefore %v is not back-dated before the request (%v)", cert.NotBefore, before)
	}
	if !notAfter.Equal(cert.NotAfter) || !notAfter.After(before.Add(23*time.Hour)) {
		t.Errorf("notAfter = %v, certificate's = %v; want both a day from %v", notAfter, cert.NotAfter, before)
	}
	if serial != Serial(cert) || len(serial) != 32 {
		t.Errorf("serial = %q, Serial(cert) = %q; want the same 32 hex digits", serial, Serial(cert))
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not verify against the CA: %v", err)
	}

	_, serial2, _, err := ca.SignAgentCSR(makeCSR(t, key, "edge-1", nil), "edge-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if serial2 == serial {
		t.Error("two certificates got the same serial")
	}
}

func TestSignAgentCSRCapsValidityAtCAExpiry(t *testing.T) {
	ca := newTestCA(t)
	_, _, notAfter, err := ca.SignAgentCSR(makeCSR(t, ecKey(t, elliptic.P256()), "edge-1", nil), "edge-1", 20*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !notAfter.Equal(ca.cert.NotAfter) {
		t.Errorf("notAfter = %v, want the CA's expiry %v", notAfter, ca.cert.NotAfter)
	}
}

func TestSignAgentCSRRejects(t *testing.T) {
	ca := newTestCA(t)
	key := ecKey(t, elliptic.P256())
	good := makeCSR(t, key, "edge-1", nil)

	badSignature := func() []byte {
		block, _ := pem.Decode(good)
		der := append([]byte(nil), block.Bytes...)
		der[len(der)-1] ^= 0xff // the last byte belongs to the signature
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}()
	notACSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")})
	spiffe, _ := url.Parse("spiffe://example.org/edge-1")

	tests := []struct {
		name    string
		csr     []byte
		cluster string
		want    error
	}{
		{"name mismatch", good, "edge-2", ErrNameMismatch},
		{"empty CN", makeCSR(t, key, "", nil), "edge-1", ErrNameMismatch},
		{"garbage", []byte("not a CSR"), "edge-1", ErrInvalidCSR},
		{"empty", nil, "edge-1", ErrInvalidCSR},
		{"PEM of another type", notACSR, "edge-1", ErrInvalidCSR},
		{"garbage inside PEM", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("garbage")}), "edge-1", ErrInvalidCSR},
		{"bad signature", badSignature, "edge-1", ErrInvalidCSR},
		{"trailing data", append(append([]byte(nil), good...), "extra"...), "edge-1", ErrInvalidCSR},
		{"DNS SAN", makeCSR(t, key, "edge-1", func(r *x509.CertificateRequest) { r.DNSNames = []string{"hub.example.com"} }), "edge-1", ErrInvalidCSR},
		{"IP SAN", makeCSR(t, key, "edge-1", func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }), "edge-1", ErrInvalidCSR},
		{"URI SAN", makeCSR(t, key, "edge-1", func(r *x509.CertificateRequest) { r.URIs = []*url.URL{spiffe} }), "edge-1", ErrInvalidCSR},
		{"email SAN", makeCSR(t, key, "edge-1", func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@example.com"} }), "edge-1", ErrInvalidCSR},
		{"RSA 1024", makeCSR(t, rsaKey(t, 1024), "edge-1", nil), "edge-1", ErrInvalidCSR},
		{"P-224", makeCSR(t, ecKey(t, elliptic.P224()), "edge-1", nil), "edge-1", ErrInvalidCSR},
		{"invalid cluster name", makeCSR(t, key, "Edge_1", nil), "Edge_1", ErrInvalidClusterName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, serial, _, err := ca.SignAgentCSR(tt.csr, tt.cluster, time.Hour)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if certPEM != nil || serial != "" {
				t.Errorf("refused request still returned a certificate")
			}
		})
	}
}

func TestSignAgentCSRRejectsBadValidity(t *testing.T) {
	ca := newTestCA(t)
	for _, validity := range []time.Duration{0, -time.Hour} {
		if _, _, _, err := ca.SignAgentCSR(makeCSR(t, ecKey(t, elliptic.P256()), "edge-1", nil), "edge-1", validity); err == nil {
			t.Errorf("validity %s: no error", validity)
		}
	}
}

func TestClusterName(t *testing.T) {
	ca := newTestCA(t)
	agent := agentCert(t, ca, "edge-1", ecKey(t, elliptic.P256()))
	agentLeaf, err := x509.ParseCertificate(agent.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.IssueServingCert([]string{"edge-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// issued signs what no CSR can obtain, to check ClusterName does not
	// rely on SignAgentCSR alone.
	issued := func(subject pkix.Name, usage x509.ExtKeyUsage) *x509.Certificate {
		cert, _, err := ca.issue(&x509.Certificate{Subject: subject, ExtKeyUsage: []x509.ExtKeyUsage{usage}},
			ecKey(t, elliptic.P256()).Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}

	tests := []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{"agent certificate", agentLeaf, "edge-1"},
		{"serving certificate", serving.Leaf, ""},
		{"CA certificate", ca.cert, ""},
		{"no certificate", nil, ""},
		{"other organisation", issued(pkix.Name{CommonName: "edge-1", Organization: []string{"acme"}}, x509.ExtKeyUsageClientAuth), ""},
		{"two organisations", issued(pkix.Name{CommonName: "edge-1", Organization: []string{ClusterOrganization, "acme"}}, x509.ExtKeyUsageClientAuth), ""},
		{"server usage", issued(pkix.Name{CommonName: "edge-1", Organization: []string{ClusterOrganization}}, x509.ExtKeyUsageServerAuth), ""},
		{"invalid name", issued(pkix.Name{CommonName: "Edge 1", Organization: []string{ClusterOrganization}}, x509.ExtKeyUsageClientAuth), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ClusterName(tt.cert)
			if tt.want == "" {
				if !errors.Is(err, ErrNotAgentCertificate) {
					t.Fatalf("ClusterName = %q, %v; want ErrNotAgentCertificate", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ClusterName = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestValidClusterName(t *testing.T) {
	long := "a123456789012345678901234567890123456789012345678901234567890bc" // 63
	tests := []struct {
		name string
		ok   bool
	}{
		{"edge-1", true},
		{"a", true},
		{"0", true},
		{long, true},
		{long + "d", false},
		{"", false},
		{"Edge-1", false},
		{"-edge", false},
		{"edge-", false},
		{"edge.1", false},
		{"edge_1", false},
		{"edge 1", false},
	}
	for _, tt := range tests {
		err := ValidClusterName(tt.name)
		if tt.ok && err != nil {
			t.Errorf("ValidClusterName(%q) = %v, want nil", tt.name, err)
		}
		if !tt.ok && !errors.Is(err, ErrInvalidClusterName) {
			t.Errorf("ValidClusterName(%q) = %v, want ErrInvalidClusterName", tt.name, err)
		}
	}
}
