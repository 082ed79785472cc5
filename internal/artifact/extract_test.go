package artifact

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-dev/drover/internal/retry"
)

func TestExtractStripsTheChartDirectory(t *testing.T) {
	dir := t.TempDir()
	archive := chartArchive(t, "web", "1.0.0", map[string]string{"values.yaml": "a: 1\n", "templates/cm.yaml": "kind: ConfigMap\n"})
	if err := ExtractTarGz(bytes.NewReader(archive), dir, ExtractOptions{StripTopDir: true}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"Chart.yaml": "name: web", "values.yaml": "a: 1", "templates/cm.yaml": "ConfigMap"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %q, %v; want it to contain %q", name, b, err, want)
		}
	}
}

func TestExtractKeepsAFluxArtifactAtTheRoot(t *testing.T) {
	dir := t.TempDir()
	archive := tgz(t, tarEntry{name: "./", typeflag: tar.TypeDir}, tarEntry{name: "./app/cm.yaml", body: "x"}, tarEntry{name: "run.sh", body: "#!/bin/sh", mode: 0o755})
	if err := ExtractTarGz(bytes.NewReader(archive), dir, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "app", "cm.yaml")); err != nil || string(b) != "x" {
		t.Errorf("app/cm.yaml: %q, %v", b, err)
	}
	if info, err := os.Stat(filepath.Join(dir, "run.sh")); err != nil || info.Mode().Perm() != 0o755 {
		t.Errorf("run.sh: %v, %v; want mode 0755", info, err)
	}
}

func TestExtractRefusesHostileArchives(t *testing.T) {
	big := strings.Repeat("0", 2048)
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		opts    ExtractOptions
		kind    error
		msg     string
	}{
		{"absolute path", []tarEntry{{name: "/etc/passwd", body: "x"}}, ExtractOptions{}, ErrInvalid, "not a relative path"},
		{"dot-dot", []tarEntry{{name: "a/../../escape", body: "x"}}, ExtractOptions{}, ErrInvalid, "not a relative path"},
		{"symlink", []tarEntry{{name: "link", typeflag: tar.TypeSymlink, linkname: "/etc"}}, ExtractOptions{}, ErrInvalid, "symbolic link"},
		{"hard link", []tarEntry{{name: "a", body: "x"}, {name: "b", typeflag: tar.TypeLink, linkname: "a"}}, ExtractOptions{}, ErrInvalid, "hard link"},
		{"device", []tarEntry{{name: "dev", typeflag: tar.TypeChar}}, ExtractOptions{}, ErrInvalid, "device"},
		{"twice", []tarEntry{{name: "a", body: "x"}, {name: "a", body: "y"}}, ExtractOptions{}, ErrInvalid, "appears twice"},
		{"outside the chart directory", []tarEntry{{name: "web/Chart.yaml", body: "x"}, {name: "other/x", body: "y"}}, ExtractOptions{StripTopDir: true}, ErrInvalid, "outside the archive's top directory"},
		{"decompression bomb", []tarEntry{{name: "a", body: big}, {name: "b", body: big}}, ExtractOptions{MaxBytes: 3000}, ErrTooLarge, "more than 3000 bytes"},
		{"too many files", []tarEntry{{name: "a"}, {name: "b"}, {name: "c"}}, ExtractOptions{MaxFiles: 2}, ErrTooLarge, "more than 2 entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "out")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			err := ExtractTarGz(bytes.NewReader(tgz(t, tc.entries...)), dir, tc.opts)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.kind, tc.msg)
			}
			if retry.IsTransient(err) {
				t.Errorf("%v is transient; the same archive fails the same way", err)
			}
			// Nothing was written beside the target directory.
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Errorf("%d entries beside the target, want 1", len(ents))
			}
			if _, err := os.Lstat(filepath.Join(dir, "link")); err == nil {
				t.Error("a link was written")
			}
		})
	}
}

func TestExtractRefusesWhatIsNotGzip(t *testing.T) {
	err := ExtractTarGz(strings.NewReader("plain text"), t.TempDir(), ExtractOptions{})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}
