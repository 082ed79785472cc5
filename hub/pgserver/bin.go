package pgserver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// BinDirEnv names the environment variable that points at a directory
// holding initdb and postgres. It wins over every other way of finding them.
const BinDirEnv = "DROVER_POSTGRES_BIN"

// errNoBinaries is what every failed search ends with; callers see it
// wrapped with what was tried.
var errNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found: install them (Debian: apt-get install postgresql) or set " + BinDirEnv)

// binaries are the absolute paths of the two programs Start runs.
type binaries struct {
	initdb   string
	postgres string
}

// findBinaries looks, in order, in $DROVER_POSTGRES_BIN, in
// `pg_config --bindir`, in the newest /usr/lib/postgresql/*/bin (Debian and
// Ubuntu keep the server there, off PATH) and finally on PATH.
func findBinaries() (binaries, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if b, ok := binariesIn(dir); ok {
			return b, nil
		}
		return binaries{}, fmt.Errorf("%s=%s has no executable initdb and postgres: %w", BinDirEnv, dir, errNoBinaries)
	}
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			if b, ok := binariesIn(strings.TrimSpace(string(out))); ok {
				return b, nil
			}
		}
	}
	for _, dir := range debianBinDirs() {
		if b, ok := binariesIn(dir); ok {
			return b, nil
		}
	}
	initdb, err1 := exec.LookPath("initdb")
	postgres, err2 := exec.LookPath("postgres")
	if err1 == nil && err2 == nil {
		return binaries{initdb: initdb, postgres: postgres}, nil
	}
	return binaries{}, errNoBinaries
}

func binariesIn(dir string) (binaries, bool) {
	if dir == "" {
		return binaries{}, false
	}
	b := binaries{initdb: filepath.Join(dir, "initdb"), postgres: filepath.Join(dir, "postgres")}
	return b, isExecutable(b.initdb) && isExecutable(b.postgres)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// debianBinDirs returns /usr/lib/postgresql/VERSION/bin, newest first.
func debianBinDirs() []string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return versionLess(versionOf(dirs[j]), versionOf(dirs[i]))
	})
	return dirs
}

func versionOf(binDir string) []int {
	var v []int
	for _, part := range strings.Split(filepath.Base(filepath.Dir(binDir)), ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
