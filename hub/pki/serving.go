package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/drover-dev/drover/internal/atomicfile"
)

// File names of the agent endpoint's serving certificate inside the
// directory given to LoadOrCreateServingCert.
const (
	ServingCertFile = "hub.crt"
	ServingKeyFile  = "hub.key"
)

const (
	// ServingCertValidity is how long a serving certificate made by
	// LoadOrCreateServingCert is valid.
	ServingCertValidity = 365 * 24 * time.Hour
	// servingRenewBefore is how close to its expiry a stored serving
	// certificate is replaced rather than reused.
	servingRenewBefore = 30 * 24 * time.Hour
)

// IssueServingCert issues a certificate and a new ECDSA P-256 key for the
// hub's agent endpoint, good for TLS server authentication as every one of
// hosts: IP addresses or DNS names (a leading "*." for a wildcard). Agents
// verify it against CertPEM, which they received at Register.
func (ca *CA) IssueServingCert(hosts []string, validity time.Duration) (tls.Certificate, error) {
	dnsNames, ips, err := parseHosts(hosts)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		// The common name is for people reading the certificate; clients
		// match hosts against the SANs only.
		Subject:               pkix.Name{CommonName: hosts[0]},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	cert, _, err := ca.issue(tmpl, key.Public(), validity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{cert.Raw},
		PrivateKey:  key,
		Leaf:        cert,
	}, nil
}

// parseHosts splits hosts into DNS names and IP addresses, refusing
// anything that is neither (a "host:port", a URL) with the index of the
// offending entry.
func parseHosts(hosts []string) ([]string, []net.IP, error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("hosts: at least one IP address or DNS name is required")
	}
	var (
		dnsNames []string
		ips      []net.IP
	)
	for i, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		name := strings.ToLower(h)
		var msgs []string
		if strings.HasPrefix(name, "*.") {
			msgs = validation.IsWildcardDNS1123Subdomain(name)
		} else {
			msgs = validation.IsDNS1123Subdomain(name)
		}
		if len(msgs) > 0 {
			return nil, nil, fmt.Errorf("hosts[%d] %s: neither an IP address nor a DNS name: %s",
				i, quote(h), strings.Join(msgs, "; "))
		}
		dnsNames = append(dnsNames, name)
	}
	return dnsNames, ips, nil
}

// LoadOrCreateServingCert returns the agent endpoint's serving certificate
// from dir (hub.crt and hub.key), reusing the stored one while it is signed
// by this CA, covers every one of hosts and stays valid for more than 30
// days; otherwise it issues a new one for ServingCertValidity and stores it
// (key mode 0600). A stored key readable by group or others is refused
// rather than replaced: whoever read it can serve as the hub until the old
// certificate expires, which the operator has to know.
//
// The certificate is read once: a hub running for longer than the renewal
// margin must call this again to pick up a renewed one.
//
// logger may be nil.
func (ca *CA) LoadOrCreateServingCert(dir string, hosts []string, logger *slog.Logger) (tls.Certificate, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if _, _, err := parseHosts(hosts); err != nil {
		return tls.Certificate{}, err
	}
	certFile, keyFile := filepath.Join(dir, ServingCertFile), filepath.Join(dir, ServingKeyFile)
	cert, reason, err := ca.loadServingCert(certFile, keyFile, hosts)
	if err != nil {
		return tls.Certificate{}, err
	}
	if reason == "" {
		logger.Info("reusing serving certificate", "file", certFile,
			"hosts", hosts, "not_after", cert.Leaf.NotAfter)
		return cert, nil
	}

	cert, err = ca.IssueServingCert(hosts, ServingCertValidity)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: encode key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: %w", err)
	}
	// A crash between the two writes leaves a key that does not match the
	// certificate, which the next call notices and replaces.
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: write key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw})
	if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("serving certificate: write certificate: %w", err)
	}
	logger.Info("issued serving certificate", "file", certFile, "reason", reason,
		"hosts", hosts, "not_after", cert.Leaf.NotAfter)
	return cert, nil
}

// loadServingCert returns the stored serving certificate, or why it cannot
// be reused. Only a key file others can read is an error.
func (ca *CA) loadServingCert(certFile, keyFile string, hosts []string) (cert tls.Certificate, reason string, err error) {
	haveKey, err := fileExists(keyFile)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	if !haveKey {
		return tls.Certificate{}, "no stored certificate", nil
	}
	if err := checkPrivate(keyFile); err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Sprintf("stored certificate unusable: %v", err), nil
	}
	leaf := cert.Leaf
	now := ca.now()
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:       ca.Pool(),
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return tls.Certificate{}, fmt.Sprintf("stored certificate does not verify against the CA: %v", err), nil
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return tls.Certificate{}, fmt.Sprintf("stored certificate does not cover host %q", h), nil
		}
	}
	if leaf.NotAfter.Sub(now) <= servingRenewBefore {
		return tls.Certificate{}, "stored certificate expires on " + leaf.NotAfter.UTC().Format(time.RFC3339), nil
	}
	return cert, "", nil
}
