// Package atomicfile writes files so that a crash or a concurrent reader
// sees the old content or the new, never half of it: the data goes to a
// temporary file in the same directory, is synced, and only then takes the
// file's name. The hub keeps its keys, certificates and database settings
// this way, the agent its identity and last assignment, droverctl its
// config.
package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data, with mode perm whatever mode an old file
// had.
func Write(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, os.Rename)
}

// Create creates path with data and mode perm, or fails with an error
// matching fs.ErrExist if path exists, so two processes starting at once
// cannot each put down a different file (a CA key, say) under one name.
func Create(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, os.Link)
}

func write(path string, data []byte, perm fs.FileMode, place func(tmp, path string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a rename a no-op; after a link it drops the extra name
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := place(tmp, path); err != nil {
		return err
	}
	// The new directory entry must survive a crash as well as the data.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
