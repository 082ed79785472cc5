package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/http"
	"time"
)

// servingPKI is a throwaway CA and a serving certificate it signed for
// 127.0.0.1 and localhost, PEM encoded: what a registry or a chart
// repository behind a private CA has, and what a client must be given to
// trust it.
type servingPKI struct {
	caCert                []byte
	serverCert, serverKey []byte
}

// newServingPKI makes a CA named after what it serves, and the server's
// certificate.
func newServingPKI(name string) (*servingPKI, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate %s CA key: %w", name, err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "drover-testbed-ca-" + name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := signCert(caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("make %s CA certificate: %w", name, err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse %s CA certificate: %w", name, err)
	}
	p := &servingPKI{caCert: pemEncode("CERTIFICATE", caDER)}
	p.serverCert, p.serverKey, err = leafCert(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("make %s serving certificate: %w", name, err)
	}
	return p, nil
}

// httpClient is a client that trusts only the CA, as a Drover component
// given the source's ca_pem does.
func (p *servingPKI) httpClient() (*http.Client, error) {
	return httpClientTrusting(p.caCert)
}

// httpClientTrusting returns a client that trusts only the CAs in caPEM.
func httpClientTrusting(caPEM []byte) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in the CA PEM")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}
