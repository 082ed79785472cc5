package secrets

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func randomKey(t *testing.T) []byte {
	t.Helper()
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return key
}

func newBox(t *testing.T, key []byte) *Box {
	t.Helper()
	box, err := NewBox(key)
	if err != nil {
		t.Fatalf("NewBox: %v", err)
	}
	return box
}

func seal(t *testing.T, box *Box, plaintext, ad string) []byte {
	t.Helper()
	sealed, err := box.Seal([]byte(plaintext), []byte(ad))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return sealed
}

func TestSealOpen(t *testing.T) {
	key := randomKey(t)
	box := newBox(t, key)
	big := bytes.Repeat([]byte("credential"), 100_000)
	tests := []struct {
		name          string
		plaintext, ad []byte
	}{
		{"password", []byte("hunter2"), []byte("https://git.example.com/team/app.git")},
		{"empty plaintext", nil, []byte("row")},
		{"no associated data", []byte("token"), nil},
		{"binary", []byte{0, 1, 2, 255, 0}, []byte{0}},
		{"1 MB", big, []byte("row")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := box.Seal(tt.plaintext, tt.ad)
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.plaintext) > 0 && bytes.Contains(sealed, tt.plaintext) {
				t.Fatal("sealed value contains the plaintext")
			}
			sum := sha256.Sum256(key)
			if sealed[0] != 1 || !bytes.Equal(sealed[1:5], sum[:4]) {
				t.Errorf("header = %x, want version 1 and key id %x", sealed[:5], sum[:4])
			}
			if want := 1 + 4 + 12 + len(tt.plaintext) + 16; len(sealed) != want {
				t.Errorf("sealed length %d, want %d", len(sealed), want)
			}
			got, err := box.Open(sealed, tt.ad)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Errorf("Open = %q, want %q", got, tt.plaintext)
			}
		})
	}
}

func TestSealIsRandomised(t *testing.T) {
	box := newBox(t, randomKey(t))
	a, b := seal(t, box, "hunter2", "row"), seal(t, box, "hunter2", "row")
	if bytes.Equal(a, b) {
		t.Fatal("sealing the same plaintext twice gave the same value")
	}
}

func TestOpenWrongKey(t *testing.T) {
	sealed := seal(t, newBox(t, randomKey(t)), "hunter2", "row")
	got, err := newBox(t, randomKey(t)).Open(sealed, []byte("row"))
	if !errors.Is(err, ErrWrongKey) || got != nil {
		t.Fatalf("Open = %q, %v; want ErrWrongKey", got, err)
	}
}

func TestOpenRefusesAlteredValues(t *testing.T) {
	box := newBox(t, randomKey(t))
	sealed := seal(t, box, "hunter2", "https://git.example.com/a.git")

	// Every single-byte change: the key id bytes make it look sealed under
	// another key, anything else must fail authentication.
	for i := range sealed {
		altered := bytes.Clone(sealed)
		altered[i] ^= 0x01
		want := ErrCorrupt
		if i >= 1 && i <= 4 {
			want = ErrWrongKey
		}
		if got, err := box.Open(altered, []byte("https://git.example.com/a.git")); !errors.Is(err, want) || got != nil {
			t.Errorf("byte %d altered: Open = %q, %v; want %v", i, got, err, want)
		}
	}
	for n := range len(sealed) {
		if got, err := box.Open(sealed[:n], []byte("https://git.example.com/a.git")); !errors.Is(err, ErrCorrupt) || got != nil {
			t.Errorf("truncated to %d bytes: Open = %q, %v; want ErrCorrupt", n, got, err)
		}
	}
	extended := append(bytes.Clone(sealed), 0)
	if _, err := box.Open(extended, []byte("https://git.example.com/a.git")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("extended: %v, want ErrCorrupt", err)
	}
}

func TestOpenRefusesOtherAssociatedData(t *testing.T) {
	box := newBox(t, randomKey(t))
	// A credential copied from repository a's row into repository b's.
	sealed := seal(t, box, "hunter2", "https://git.example.com/a.git")
	for _, ad := range []string{"https://git.example.com/b.git", "https://git.example.com/a.gi", "", "https://git.example.com/a.git\x00"} {
		if got, err := box.Open(sealed, []byte(ad)); !errors.Is(err, ErrCorrupt) || got != nil {
			t.Errorf("associated data %q: Open = %q, %v; want ErrCorrupt", ad, got, err)
		}
	}
}

func TestNewBox(t *testing.T) {
	key := randomKey(t)
	b64 := base64.StdEncoding.EncodeToString(key)
	sealed := seal(t, newBox(t, key), "hunter2", "row")

	for name, input := range map[string][]byte{
		"raw":               bytes.Clone(key),
		"base64":            []byte(b64),
		"base64 and spaces": []byte("  " + b64 + "\n"),
	} {
		box, err := NewBox(input)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got, err := box.Open(sealed, []byte("row")); err != nil || string(got) != "hunter2" {
			t.Errorf("%s: a different key: Open = %q, %v", name, got, err)
		}
	}

	for name, input := range map[string][]byte{
		"empty":             nil,
		"16 bytes":          key[:16],
		"33 bytes":          append(bytes.Clone(key), 'x'),
		"base64 of 16":      []byte(base64.StdEncoding.EncodeToString(key[:16])),
		"base64 of 33":      []byte(base64.StdEncoding.EncodeToString(append(bytes.Clone(key), 'x'))),
		"unpadded base64":   []byte(strings.TrimRight(b64, "=")),
		"not base64 at all": []byte(strings.Repeat("!", 44)),
	} {
		_, err := NewBox(input)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidKey", name, err)
			continue
		}
		if len(input) > 0 && strings.Contains(err.Error(), string(input)) {
			t.Errorf("%s: error quotes the key: %q", name, err)
		}
	}
}

func TestNewBoxCopiesKey(t *testing.T) {
	key := randomKey(t)
	box := newBox(t, key)
	sealed := seal(t, box, "hunter2", "row")
	clear(key)
	if _, err := box.Open(sealed, []byte("row")); err != nil {
		t.Fatalf("Open after the caller cleared its key: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "secrets.key")
	first, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
	}
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(content))); err != nil || len(key) != KeySize {
		t.Errorf("key file holds %q, want the base64 of %d bytes", content, KeySize)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries, want the key file only", len(entries))
	}

	second, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := second.Open(seal(t, first, "hunter2", "row"), []byte("row")); err != nil || string(got) != "hunter2" {
		t.Fatalf("reloaded key does not open what the first sealed: %q, %v", got, err)
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.key")
	const n = 8
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			box, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = box.KeyID()
		})
	}
	wg.Wait()
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("concurrent callers got different keys: %v", ids)
		}
	}
}

func TestLoadOrCreateKeyOperatorFile(t *testing.T) {
	key := randomKey(t)
	sealed := seal(t, newBox(t, key), "hunter2", "row")
	for name, content := range map[string][]byte{
		"raw":    key,
		"base64": []byte(base64.StdEncoding.EncodeToString(key) + "\n"),
	} {
		path := filepath.Join(t.TempDir(), "secrets.key")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		box, err := LoadOrCreateKey(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, err := box.Open(sealed, []byte("row")); err != nil || string(got) != "hunter2" {
			t.Errorf("%s: Open = %q, %v", name, got, err)
		}
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
		mode    fs.FileMode
		want    error
	}{
		{"world readable", []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))), 0o644, ErrKeyFileMode},
		{"group readable", []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))), 0o640, ErrKeyFileMode},
		{"short key", []byte(base64.StdEncoding.EncodeToString(make([]byte, 16))), 0o600, ErrInvalidKey},
		{"empty file", nil, 0o600, ErrInvalidKey},
		{"garbage", []byte("not a key at all\n"), 0o600, ErrInvalidKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secrets.key")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			box, err := LoadOrCreateKey(path)
			if !errors.Is(err, tt.want) || box != nil {
				t.Fatalf("LoadOrCreateKey = %v, %v; want %v", box, err, tt.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
			if tt.want == ErrKeyFileMode && !strings.Contains(err.Error(), "chmod 600 "+path) {
				t.Errorf("error %q does not say chmod 600 %s", err, path)
			}
			after, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(after, tt.content) {
				t.Errorf("refused key file was changed")
			}
		})
	}
}
