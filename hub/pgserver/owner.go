package pgserver

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// DefaultUser is the account PostgreSQL runs as when Drover runs as root.
const DefaultUser = "nobody"

// runAs is the account initdb and postgres run as. A nil *runAs means
// "as this process", which is what happens unless this process is root.
type runAs struct {
	name     string
	uid, gid uint32
}

// lookupRunAs decides who runs PostgreSQL. PostgreSQL refuses to start as
// root, so a root caller hands it to an unprivileged account.
func lookupRunAs(name string) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		name = DefaultUser
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up user %q to run PostgreSQL as (it refuses to run as root): %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %q is root; PostgreSQL refuses to run as root: choose an unprivileged user", name)
	}
	return &runAs{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

func (r *runAs) credential() *syscall.Credential {
	if r == nil {
		return nil
	}
	// Groups is empty on purpose: drop root's supplementary groups.
	return &syscall.Credential{Uid: r.uid, Gid: r.gid, Groups: []uint32{}}
}

// chown hands path to the run-as account; a no-op when not root.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	if err := os.Lchown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("hand %s to user %s: %w", path, r.name, err)
	}
	return nil
}

// checkSearchable fails when the run-as account could not reach dir
// because a parent directory lacks the search (x) bit for it. PostgreSQL
// would fail later with a less helpful "Permission denied".
func (r *runAs) checkSearchable(dir string) error {
	if r == nil {
		return nil
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		perm := fi.Mode().Perm()
		ok := perm&0o001 != 0
		if st, isUnix := fi.Sys().(*syscall.Stat_t); isUnix {
			ok = ok || (st.Uid == r.uid && perm&0o100 != 0) || (st.Gid == r.gid && perm&0o010 != 0)
		}
		if !ok {
			return fmt.Errorf("PostgreSQL runs as user %s because this process is root, and it cannot reach %s: directory %s (mode %v) is not searchable by it: run `chmod o+x %s` or put the data directory somewhere every parent allows (e.g. /var/lib/drover)",
				r.name, dir, p, perm, p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
