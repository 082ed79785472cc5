// Package state keeps what an agent must not lose across restarts: its
// identity (private key, certificate, the hub's CA) and the last assignment
// it took, so that it can keep its cluster right while the hub is away.
// Everything lives in one directory, written atomically, readable only by
// the agent's user.
package state

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
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/internal/atomicfile"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Files in the state directory.
const (
	keyFile        = "agent.key"
	certFile       = "agent.crt"
	caFile         = "hub-ca.crt"
	assignmentFile = "assignment.pb"
	appliedFile    = "applied-version"
	removingFile   = "removing.pb"
)

// Dir is an agent's state directory.
type Dir struct{ path string }

// Open returns the state directory at path, creating it (mode 0700).
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// ErrNoIdentity means the agent has not registered yet.
var ErrNoIdentity = errors.New("no identity yet: the agent has not registered")

// NewKeyAndCSR makes the agent's private key, stores it, and returns a CSR
// naming the cluster. The key never leaves this directory.
func (d *Dir) NewKeyAndCSR(cluster string) (csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	if err := d.write(keyFile+".new", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cluster}}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), nil
}

// SaveIdentity stores the certificate the hub issued for the key of the
// last NewKeyAndCSR, and the hub's CA.
func (d *Dir) SaveIdentity(certPEM, caPEM []byte) error {
	keyPEM, err := os.ReadFile(filepath.Join(d.path, keyFile+".new"))
	if err != nil {
		return fmt.Errorf("read new key: %w", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("the hub's certificate does not match the agent's key: %w", err)
	}
	if err := d.write(caFile, caPEM); err != nil {
		return err
	}
	if err := d.write(certFile, certPEM); err != nil {
		return err
	}
	return os.Rename(filepath.Join(d.path, keyFile+".new"), filepath.Join(d.path, keyFile))
}

// Identity returns the agent's client certificate and the hub CA pool.
func (d *Dir) Identity() (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(d.path, certFile), filepath.Join(d.path, keyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, nil, ErrNoIdentity
	}
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load identity: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(d.path, caFile))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load hub CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("load hub CA: %s holds no PEM certificate", caFile)
	}
	return cert, pool, nil
}

// SaveAssignment stores the last assignment the agent took.
func (d *Dir) SaveAssignment(a *droverv1.Assignment) error {
	b, err := proto.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode assignment: %w", err)
	}
	return d.write(assignmentFile, b)
}

// Assignment returns the stored assignment, or nil when there is none.
func (d *Dir) Assignment() (*droverv1.Assignment, error) {
	return d.readAssignment(assignmentFile, "the stored assignment")
}

// readAssignment decodes file, an Assignment; nil when there is none.
func (d *Dir) readAssignment(file, what string) (*droverv1.Assignment, error) {
	b, err := os.ReadFile(filepath.Join(d.path, file))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	var a droverv1.Assignment
	if err := proto.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("decode %s: %w", what, err)
	}
	return &a, nil
}

// SaveRemoving stores the applications that left the assignment and are
// not removed from the cluster yet, so that an agent restarted meanwhile
// still removes them: the stored assignment no longer names them.
func (d *Dir) SaveRemoving(apps []*droverv1.AppAssignment) error {
	b, err := proto.Marshal(&droverv1.Assignment{Applications: apps})
	if err != nil {
		return fmt.Errorf("encode the applications being removed: %w", err)
	}
	return d.write(removingFile, b)
}

// Removing returns the applications stored by SaveRemoving.
func (d *Dir) Removing() ([]*droverv1.AppAssignment, error) {
	a, err := d.readAssignment(removingFile, "the applications being removed")
	return a.GetApplications(), err
}

// SaveAppliedVersion records the assignment version the agent applied and
// acknowledged.
func (d *Dir) SaveAppliedVersion(v string) error { return d.write(appliedFile, []byte(v)) }

// AppliedVersion returns the version recorded by SaveAppliedVersion.
func (d *Dir) AppliedVersion() string {
	b, err := os.ReadFile(filepath.Join(d.path, appliedFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// write replaces a file atomically with mode 0600: a crash leaves the old
// content or the new, never half of it.
func (d *Dir) write(name string, data []byte) error {
	if err := atomicfile.Write(filepath.Join(d.path, name), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
