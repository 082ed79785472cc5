package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o600); err != nil {
		t.Fatalf("Write: %v", err)
	}
	assertFile(t, path, "new", 0o600)
	assertOnlyFile(t, dir, "key")

	if err := Write(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Write into a missing directory: %v, want fs.ErrNotExist", err)
	}
}

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")
	if err := Create(path, []byte("first"), 0o600); err != nil {
		t.Fatalf("Create: %v", err)
	}
	assertFile(t, path, "first", 0o600)
	if err := Create(path, []byte("second"), 0o644); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over an existing file: %v, want fs.ErrExist", err)
	}
	assertFile(t, path, "first", 0o600)
	assertOnlyFile(t, dir, "ca.key")
}

func assertFile(t *testing.T, path, content string, perm fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content || fi.Mode().Perm() != perm {
		t.Errorf("%s = %q mode %v, want %q mode %v", path, b, fi.Mode().Perm(), content, perm)
	}
}

// assertOnlyFile checks that no temporary file is left beside name.
func assertOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != name {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only %s", names, name)
	}
}
