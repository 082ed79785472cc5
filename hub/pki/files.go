package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrKeyFileMode is returned when a private key file the hub keeps is
// readable or writable by group or others.
var ErrKeyFileMode = errors.New("private key file is accessible by group or others")

// checkPrivate refuses a key file other users could read: a CA key anyone on
// the machine can copy lets them mint any cluster's identity.
func checkPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o: chmod 600 %s", ErrKeyFileMode, path, mode, path)
	}
	return nil
}

// writeFileAtomic writes data to path with mode perm through a temporary
// file in the same directory, so a crash never leaves a half-written key or
// certificate. With replace false it fails with an error matching
// fs.ErrExist when path exists, so two hubs starting on one directory
// cannot each put down a different CA key.
func writeFileAtomic(path string, data []byte, perm fs.FileMode, replace bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a rename or link this is a no-op or drops the extra name
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
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
