// Package pki is the hub's certificate authority for agent identities, and
// the source of the certificate the hub's agent endpoint serves.
//
// An agent proves which cluster it is with a client certificate the hub
// signed when it registered. The agent makes its own key pair and sends only
// a certificate signing request; SignAgentCSR checks it and issues a
// certificate whose common name is the cluster name and whose organisation
// is ClusterOrganization, good for TLS client authentication and nothing
// else. On every Connect the hub takes the cluster's name from the verified
// peer certificate with ClusterName, so what an agent may do is decided by
// its certificate, never by names in its messages.
//
// The CA is the hub's own, kept in its data directory by LoadOrCreateCA, or
// one the operator supplies (LoadCA). The data directory holds:
//
//	ca.crt   the CA certificate, mode 0644; agents receive it at Register
//	ca.key   the CA's private key, mode 0600; a looser mode is refused
//	hub.crt  the agent endpoint's serving certificate, mode 0644
//	hub.key  its private key, mode 0600; renewed by LoadOrCreateServingCert
//
// Private keys never leave their files: nothing here logs them or puts them
// in an error.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/drover-dev/drover/internal/atomicfile"
)

// File names of the hub's own CA inside the directory given to
// LoadOrCreateCA.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

const (
	caCommonName = "Drover agent CA"
	caValidity   = 10 * 365 * 24 * time.Hour
	// clockSkew back-dates every certificate so a peer whose clock runs a
	// little behind the hub's does not see it as not yet valid.
	clockSkew = 5 * time.Minute
	// caExpiryWarning is how long before its expiry a loaded CA is logged
	// as a warning, giving operators time to rotate it.
	caExpiryWarning = 180 * 24 * time.Hour
	minRSABits      = 2048
	// maxRSABits is crypto/tls's own limit; a larger key could sign a
	// certificate no handshake accepts.
	maxRSABits = 8192
)

// CA signs agent client certificates and the hub's serving certificates.
// A CA is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	// now dates the certificates the CA issues. Tests move it into the past
	// to issue certificates that have already expired.
	now func() time.Time
}

// LoadOrCreateCA loads the hub's own CA from dir (ca.crt and ca.key), or,
// when neither file exists, creates one there: an ECDSA P-256 key and a
// self-signed certificate valid for ten years. dir is created with mode 0700
// if missing. A ca.key readable by group or others is refused, and so is a
// directory holding only one of the two files, since making a new CA would
// lock out every registered agent.
//
// logger may be nil.
func LoadOrCreateCA(dir string, logger *slog.Logger) (*CA, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	haveCert, err := fileExists(certFile)
	if err != nil {
		return nil, err
	}
	haveKey, err := fileExists(keyFile)
	if err != nil {
		return nil, err
	}
	switch {
	case haveCert && haveKey:
		if err := checkPrivate(keyFile); err != nil {
			return nil, err
		}
		ca, err := LoadCA(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		logger.Info("loaded agent CA", "dir", dir,
			"fingerprint", fingerprint(ca.cert), "not_after", ca.cert.NotAfter)
		if left := ca.cert.NotAfter.Sub(ca.now()); left < caExpiryWarning {
			logger.Warn("agent CA expires soon; agents cannot connect after it expires",
				"dir", dir, "not_after", ca.cert.NotAfter)
		}
		return ca, nil
	case haveCert || haveKey:
		present, missing := certFile, keyFile
		if haveKey {
			present, missing = keyFile, certFile
		}
		return nil, fmt.Errorf("agent CA: %s exists but %s does not: restore the missing file, "+
			"or remove %s to make a new CA (every agent then has to register again)",
			present, missing, present)
	}

	ca, keyPEM, err := newCA(time.Now())
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent CA: %w", err)
	}
	// The key goes first: a crash between the two writes leaves a key
	// without a certificate, which the next start reports, rather than a
	// certificate whose key is lost.
	if err := atomicfile.Create(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("agent CA: write key: %w", err)
	}
	if err := atomicfile.Create(certFile, ca.certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("agent CA: write certificate: %w", err)
	}
	logger.Info("created agent CA", "dir", dir,
		"fingerprint", fingerprint(ca.cert), "not_after", ca.cert.NotAfter)
	return ca, nil
}

// newCA makes a CA key and its self-signed certificate, returning the key
// as PKCS#8 PEM for the caller to store.
func newCA(now time.Time) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: caCommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA: parse new certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA: encode key: %w", err)
	}
	ca := &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		now:     time.Now,
	}
	return ca, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// LoadCA loads an operator-supplied CA: certFile holds exactly one PEM
// certificate, a CA allowed to sign certificates, and keyFile its
// unencrypted RSA (2048 to 8192 bits) or ECDSA private key in PKCS#1,
// PKCS#8 or SEC 1 ("EC PRIVATE KEY") PEM.
//
// The mode of keyFile is not checked here, unlike LoadOrCreateCA's: where an
// operator's key lives (a Kubernetes Secret volume is 0644 by default inside
// a container only the hub runs in) is the operator's decision.
//
// Only this certificate is trusted for agents (see Pool), not its issuers,
// so an intermediate CA dedicated to Drover does not make every certificate
// of the organisation's root an agent identity.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("agent CA: %w", err)
	}
	cert, err := parseSingleCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("agent CA certificate %s: %w", certFile, err)
	}
	if err := checkCACert(cert); err != nil {
		return nil, fmt.Errorf("agent CA certificate %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("agent CA: %w", err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agent CA key %s: %w", keyFile, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("agent CA: key %s does not belong to certificate %s", keyFile, certFile)
	}
	return &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:     key,
		now:     time.Now,
	}, nil
}

// CertPEM returns the CA certificate in PEM, as agents receive it at
// Register to trust the hub and as the hub's peers need it to trust agents.
func (ca *CA) CertPEM() []byte {
	return bytes.Clone(ca.certPEM)
}

// Pool returns a new pool holding only the CA certificate: the ClientCAs of
// the hub's mutual-TLS listener.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// issue signs tmpl for pub, valid from now (less clockSkew) for validity,
// but never beyond the CA's own expiry, after which no chain verifies.
func (ca *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, []byte, error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("validity %s: must be positive", validity)
	}
	now := ca.now()
	if !now.Before(ca.cert.NotAfter) {
		return nil, nil, fmt.Errorf("agent CA expired on %s: replace it (every agent then has to register again)",
			ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// newSerial returns a random serial number with its top bit set: 127 random
// bits, always 32 hex digits long, positive as RFC 5280 requires.
func newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	b[0] |= 0x80
	return new(big.Int).SetBytes(b), nil
}

func checkCACert(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return errors.New("not a CA certificate (basic constraints CA:TRUE missing)")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("key usage does not allow signing certificates (keyCertSign missing)")
	}
	return checkPublicKey(cert.PublicKey)
}

// checkPublicKey refuses keys too weak to trust, or that crypto/tls cannot
// use in a handshake.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits: want %d to %d bits", n, minRSABits, maxRSABits)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return fmt.Errorf("ECDSA curve %s: want P-256, P-384 or P-521", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("key type %T: want RSA, ECDSA or Ed25519", pub)
	}
	return nil
}

// parseSingleCert parses PEM holding exactly one certificate, so an
// operator who passes a chain file learns that only the signing CA is
// wanted rather than having its issuers trusted or ignored silently.
func parseSingleCert(data []byte) (*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("data that is not PEM")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q: want only CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	switch len(certs) {
	case 0:
		return nil, errors.New("no PEM CERTIFICATE block")
	case 1:
		return certs[0], nil
	default:
		return nil, fmt.Errorf("%d certificates: give only the CA that signs agent certificates", len(certs))
	}
}

// parsePrivateKey parses an unencrypted RSA or ECDSA private key in PKCS#1,
// PKCS#8 or SEC 1 PEM. Errors never quote the key.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key block")
		}
		if block.Headers["Proc-Type"] != "" || block.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("the key is encrypted: decrypt it (openssl pkey -in KEY -out KEY.plain)")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "EC PARAMETERS":
			// openssl ecparam -genkey writes the curve before the key.
			continue
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("PEM block %q: want RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY", block.Type)
		}
		if err != nil {
			return nil, err
		}
		var signer crypto.Signer
		switch k := key.(type) {
		case *rsa.PrivateKey:
			signer = k
		case *ecdsa.PrivateKey:
			signer = k
		default:
			return nil, fmt.Errorf("key type %T: want RSA or ECDSA", key)
		}
		if err := checkPublicKey(signer.Public()); err != nil {
			return nil, err
		}
		return signer, nil
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// fingerprint is the SHA-256 of the certificate, the form operators compare
// with `openssl x509 -fingerprint -sha256`.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}
