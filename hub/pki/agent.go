package pki

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// ClusterOrganization is the subject organisation of every agent
// certificate. ClusterName requires it, so no other certificate the CA signs
// (the hub's serving certificate, or anything an operator-supplied CA
// issues for other uses) passes as a cluster identity.
const ClusterOrganization = "drover:clusters"

var (
	// ErrInvalidCSR is returned by SignAgentCSR for a request it cannot
	// read, whose signature does not verify, that asks for more than a
	// cluster identity, or that carries a weak key.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrNameMismatch is returned by SignAgentCSR when the CSR's common
	// name is not the cluster name being registered.
	ErrNameMismatch = errors.New("CSR common name does not match the cluster name")
	// ErrInvalidClusterName is returned by ValidClusterName.
	ErrInvalidClusterName = errors.New("invalid cluster name")
	// ErrNotAgentCertificate is returned by ClusterName for a certificate
	// that does not name a cluster.
	ErrNotAgentCertificate = errors.New("not an agent certificate")
)

// ValidClusterName reports whether name can name a cluster: a DNS-1123
// label (1 to 63 lower-case letters, digits and '-', starting and ending
// with a letter or digit), so it fits in Kubernetes object names, label
// values and URLs unchanged.
func ValidClusterName(name string) error {
	if msgs := validation.IsDNS1123Label(name); len(msgs) > 0 {
		return fmt.Errorf("%w %s: %s", ErrInvalidClusterName, quote(name), strings.Join(msgs, "; "))
	}
	return nil
}

// SignAgentCSR issues the client certificate of cluster clusterName from a
// PEM PKCS#10 request the agent made with its own key. The request must be
// signed by that key, name clusterName as its common name (else
// ErrNameMismatch), ask for no subject alternative names and carry an RSA
// key of 2048 to 8192 bits, an ECDSA key on P-256, P-384 or P-521, or an
// Ed25519 key (else ErrInvalidCSR). Only the key is taken from the request: the certificate
// says CN=clusterName, O=ClusterOrganization, and is good for TLS client
// authentication only, for validity or until the CA expires, whichever
// comes first.
//
// serial is the certificate's serial number as Serial formats it, for the
// store to record and Connect to check against.
func (ca *CA) SignAgentCSR(csrPEM []byte, clusterName string, validity time.Duration) (certPEM []byte, serial string, notAfter time.Time, err error) {
	if err := ValidClusterName(clusterName); err != nil {
		return nil, "", time.Time{}, err
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, "", time.Time{}, err
	}
	if cn := csr.Subject.CommonName; cn != clusterName {
		return nil, "", time.Time{}, fmt.Errorf("%w: CSR names %s, cluster name is %q",
			ErrNameMismatch, quote(cn), clusterName)
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.URIs) + len(csr.EmailAddresses); n > 0 {
		return nil, "", time.Time{}, fmt.Errorf("%w: asks for %d subject alternative names: "+
			"an agent certificate names the cluster in its common name only", ErrInvalidCSR, n)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, "", time.Time{}, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}

	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:   clusterName,
			Organization: []string{ClusterOrganization},
		},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	cert, certPEM, err := ca.issue(tmpl, csr.PublicKey, validity)
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("agent certificate for %s: %w", clusterName, err)
	}
	return certPEM, Serial(cert), cert.NotAfter, nil
}

// parseCSR parses one PEM certificate request and checks its signature,
// which proves the agent holds the key it asks a certificate for.
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM CERTIFICATE REQUEST block", ErrInvalidCSR)
	}
	// "NEW CERTIFICATE REQUEST" is what older tools (and Java's keytool)
	// write for the same thing.
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block %q, want CERTIFICATE REQUEST", ErrInvalidCSR, block.Type)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: data after the CERTIFICATE REQUEST block", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrInvalidCSR, err)
	}
	return csr, nil
}

// ClusterName returns the cluster an agent certificate names. cert must be
// the leaf of a chain already verified against the CA's Pool (the first
// certificate of tls.ConnectionState.VerifiedChains[0]); ClusterName checks
// only that a verified certificate is an agent identity, not its signature.
func ClusterName(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrNotAgentCertificate)
	}
	if orgs := cert.Subject.Organization; len(orgs) != 1 || orgs[0] != ClusterOrganization {
		return "", fmt.Errorf("%w: organisation %q, want [%q]", ErrNotAgentCertificate, orgs, ClusterOrganization)
	}
	if cert.IsCA || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", fmt.Errorf("%w: not a client certificate", ErrNotAgentCertificate)
	}
	name := cert.Subject.CommonName
	if err := ValidClusterName(name); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotAgentCertificate, err)
	}
	return name, nil
}

// Serial returns cert's serial number in lower-case hexadecimal without
// leading zeros, the form SignAgentCSR returns.
func Serial(cert *x509.Certificate) string {
	return cert.SerialNumber.Text(16)
}

// quote quotes s for an error message, shortened: names in CSRs come from
// outside and can be of any length.
func quote(s string) string {
	const maxRunes = 80
	if r := []rune(s); len(r) > maxRunes {
		return fmt.Sprintf("%q...", string(r[:maxRunes]))
	}
	return fmt.Sprintf("%q", s)
}
