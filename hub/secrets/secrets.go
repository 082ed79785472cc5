// Package secrets encrypts what the hub must store but must not reveal
// (repository credentials first), so that a copy of the database, a backup
// or a replica alone gives none of it away.
//
// A Box seals values with AES-256-GCM under one 32-byte key that lives
// outside the database: a file the hub creates in its data directory
// (LoadOrCreateKey) or a key the operator supplies (NewBox). Losing the key
// loses every sealed value; back it up apart from the database.
//
// A sealed value is
//
//	byte  0       format version, 1
//	bytes 1..4    key id: the first 4 bytes of SHA-256(key)
//	bytes 5..16   random 96-bit nonce
//	bytes 17..    ciphertext, then the 16-byte GCM tag
//
// The version byte and key id are authenticated along with the caller's
// associated data. The key id lets a later version hold several keys and
// pick the one a value was sealed with, so keys can be rotated.
//
// Associated data binds a value to where it is stored: seal a repository's
// password with the repository URL, and a password copied into another
// row does not open there.
package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/drover-dev/drover/internal/atomicfile"
)

// KeySize is the length of a Box's key in bytes.
const KeySize = 32

const (
	formatV1   = 1
	keyIDSize  = 4
	headerSize = 1 + keyIDSize
	nonceSize  = 12
	tagSize    = 16
)

var (
	// ErrWrongKey is returned by Open for a value sealed under another key.
	ErrWrongKey = errors.New("sealed with another key")
	// ErrCorrupt is returned by Open for a value that is not one Seal made
	// under this key with these associated data: truncated, altered, of an
	// unknown format, or sealed for another row.
	ErrCorrupt = errors.New("sealed value is corrupt")
	// ErrInvalidKey is returned for a key that is not 32 bytes.
	ErrInvalidKey = errors.New("invalid secrets key")
	// ErrKeyFileMode is returned for a key file readable or writable by
	// group or others.
	ErrKeyFileMode = errors.New("secrets key file is accessible by group or others")
)

// Box seals and opens values under one key. A Box is safe for concurrent
// use.
type Box struct {
	aead  cipher.AEAD
	keyID [keyIDSize]byte
}

// NewBox returns a Box for an operator-supplied key: exactly 32 bytes, used
// as they are, or their standard base64 encoding (44 characters, surrounding
// white space ignored), as `openssl rand -base64 32` prints. The key must be
// random; a 32-character password is taken as it is and is as weak as it.
// NewBox keeps its own copy of key.
func NewBox(key []byte) (*Box, error) {
	if len(key) != KeySize {
		decoded, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(key)))
		// The error says only sizes: the input may be almost the key.
		if err != nil || len(decoded) != KeySize {
			return nil, fmt.Errorf("%w: %d bytes: want %d random bytes or their base64 "+
				"(44 characters), e.g. from `openssl rand -base64 32`", ErrInvalidKey, len(key), KeySize)
		}
		key = decoded
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	b := &Box{aead: aead}
	sum := sha256.Sum256(key)
	copy(b.keyID[:], sum[:keyIDSize])
	return b, nil
}

// KeyID returns the key's id in hexadecimal, which identifies the key in
// logs without revealing it.
func (b *Box) KeyID() string {
	return hex.EncodeToString(b.keyID[:])
}

// Seal encrypts plaintext and binds it to associatedData, which Open must be
// given again. Sealing the same plaintext twice gives different values.
//
// Random nonces keep one key safe for about four billion values, far more
// than a hub stores.
func (b *Box) Seal(plaintext, associatedData []byte) ([]byte, error) {
	out := make([]byte, headerSize+nonceSize, headerSize+nonceSize+len(plaintext)+tagSize)
	out[0] = formatV1
	copy(out[1:headerSize], b.keyID[:])
	nonce := out[headerSize:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return b.aead.Seal(out, nonce, plaintext, additionalData(out[:headerSize], associatedData)), nil
}

// Open decrypts a value Seal made with the same associatedData. It returns
// ErrWrongKey for a value sealed under another key and ErrCorrupt for
// anything else it cannot open.
func (b *Box) Open(sealed, associatedData []byte) ([]byte, error) {
	if len(sealed) < headerSize+nonceSize+tagSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than any sealed value", ErrCorrupt, len(sealed))
	}
	if v := sealed[0]; v != formatV1 {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrCorrupt, v)
	}
	if id := sealed[1:headerSize]; !bytes.Equal(id, b.keyID[:]) {
		return nil, fmt.Errorf("%w: value has key id %x, this key is %s", ErrWrongKey, id, b.KeyID())
	}
	nonce := sealed[headerSize : headerSize+nonceSize]
	plaintext, err := b.aead.Open(nil, nonce, sealed[headerSize+nonceSize:], additionalData(sealed[:headerSize], associatedData))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed: altered, or sealed with other associated data", ErrCorrupt)
	}
	return plaintext, nil
}

// additionalData authenticates the header with the caller's data. The
// header has a fixed size, so no two (header, data) pairs concatenate to the
// same bytes.
func additionalData(header, associatedData []byte) []byte {
	ad := make([]byte, 0, len(header)+len(associatedData))
	return append(append(ad, header...), associatedData...)
}

// LoadOrCreateKey returns a Box for the key in the file at path, creating
// the file (mode 0600, and its directory 0700 if missing) with a new random
// key when there is none. The file holds the key's base64 or its 32 raw
// bytes. A key file readable or writable by group or others is refused.
// Two hubs starting on one path at once end up with the same key.
func LoadOrCreateKey(path string) (*Box, error) {
	box, err := loadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return box, err
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	content := base64.StdEncoding.AppendEncode(nil, key)
	content = append(content, '\n')
	err = atomicfile.Create(path, content, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it between our read and our write:
		// its key is the one everybody must use.
		return loadKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets key: write %s: %w", path, err)
	}
	return NewBox(key)
}

// loadKey reads the key file at path; its error matches fs.ErrNotExist when
// there is none.
func loadKey(path string) (*Box, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	// Whoever can read the key can read every stored credential.
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o: chmod 600 %s", ErrKeyFileMode, path, mode, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	box, err := NewBox(data)
	if err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	return box, nil
}
