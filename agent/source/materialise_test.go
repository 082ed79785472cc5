package source

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

// TestMaterialiseModes checks that a tree's symlinks stay symlinks, pointing
// where they point in Git (inside the tree or not: readers decide), and that
// executables keep their mode.
func TestMaterialiseModes(t *testing.T) {
	t.Parallel()
	wfs := memfs.New()
	repo, err := git.Init(memory.NewStorage(), wfs)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, perm os.FileMode) {
		f, err := wfs.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	write("app/cm.yaml", "kind: ConfigMap\n", 0o644)
	write("bin/run.sh", "#!/bin/sh\n", 0o755)
	for link, target := range map[string]string{
		"app/link.yaml": "cm.yaml",
		"app/shared":    "../bin",
		"escape.yaml":   "../../../etc/passwd",
		"absolute.yaml": "/etc/passwd",
	} {
		if err := wfs.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	wt, err := repo.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	if err := wt.AddGlob("."); err != nil {
		t.Fatal(err)
	}
	hash, err := wt.Commit("one", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@drover.invalid", When: time.Unix(0, 0)}})
	if err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "trees", hash.String())
	if err := materialise(repo, hash, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "app/cm.yaml")); err != nil || string(b) != "kind: ConfigMap\n" {
		t.Errorf("app/cm.yaml: %q, %v", b, err)
	}
	if info, err := os.Stat(filepath.Join(dst, "bin/run.sh")); err != nil || info.Mode().Perm()&0o100 == 0 {
		t.Errorf("bin/run.sh: %v, %v", info, err)
	}
	for link, target := range map[string]string{
		"app/link.yaml": "cm.yaml",
		"app/shared":    "../bin",
		"escape.yaml":   "../../../etc/passwd",
		"absolute.yaml": "/etc/passwd",
	} {
		if got, err := os.Readlink(filepath.Join(dst, link)); err != nil || got != target {
			t.Errorf("%s -> %q (%v), want -> %q", link, got, err, target)
		}
	}
	// Nothing temporary is left beside the tree.
	entries, err := os.ReadDir(filepath.Dir(dst))
	if err != nil || len(entries) != 1 {
		t.Errorf("trees: %v, %v", entries, err)
	}
}
