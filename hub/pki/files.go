package pki

import (
	"errors"
	"fmt"
	"os"
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
