package artifact

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/drover-dev/drover/internal/retry"
)

// Limits on what one archive may unpack to, so a small archive cannot fill
// the disk (a gzip bomb) or exhaust inodes.
const (
	// MaxExtractedBytes bounds the total size of an archive's files.
	MaxExtractedBytes = 256 << 20
	// MaxExtractedFiles bounds the number of entries of an archive.
	MaxExtractedFiles = 10000
)

// ExtractOptions say how to unpack an archive.
type ExtractOptions struct {
	// StripTopDir removes the single top-level directory every entry is
	// in, as a Helm chart archive has (the chart's name), so the chart is
	// at the root. An entry outside that directory is an error.
	StripTopDir bool
	// MaxBytes and MaxFiles override MaxExtractedBytes and
	// MaxExtractedFiles when positive.
	MaxBytes int64
	MaxFiles int
}

func (o ExtractOptions) limits() (int64, int) {
	b, f := o.MaxBytes, o.MaxFiles
	if b <= 0 {
		b = MaxExtractedBytes
	}
	if f <= 0 {
		f = MaxExtractedFiles
	}
	return b, f
}

// ExtractTarGz unpacks the gzip-compressed tar r into dir, which must exist
// and should be empty. Only regular files and directories are written:
// links of any kind, devices and FIFOs are refused, as are absolute paths
// and paths with "..", so nothing is written outside dir (an os.Root
// enforces it as well). Files get mode 0644 (0755 if executable) whatever
// the archive says. Exceeding MaxExtractedBytes or MaxExtractedFiles is
// ErrTooLarge. Errors are permanent: the same archive fails the same way.
func ExtractTarGz(r io.Reader, dir string, opts ExtractOptions) error {
	err := extract(r, dir, opts)
	if err != nil {
		return retry.Permanent(fmt.Errorf("unpack: %w", err))
	}
	return nil
}

func extract(r io.Reader, dir string, opts ExtractOptions) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: not gzip-compressed: %v", ErrInvalid, err)
	}
	defer zr.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(zr)
	maxBytes, maxFiles := opts.limits()
	var files int
	var total int64
	top := ""
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		files++
		if files > maxFiles {
			return fmt.Errorf("%w: more than %d entries", ErrTooLarge, maxFiles)
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue // "./"
		}
		if opts.StripTopDir {
			first, rest, _ := strings.Cut(name, "/")
			switch {
			case top == "":
				top = first
			case first != top:
				return fmt.Errorf("%w: entry %q is outside the archive's top directory %q", ErrInvalid, h.Name, top)
			}
			if rest == "" {
				continue
			}
			name = rest
		}
		local := filepath.FromSlash(name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(local, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if h.Size < 0 || total+h.Size > maxBytes {
				return fmt.Errorf("%w: files add up to more than %d bytes (a decompression bomb?)", ErrTooLarge, maxBytes)
			}
			total += h.Size
			if d := path.Dir(name); d != "." {
				if err := root.MkdirAll(filepath.FromSlash(d), 0o755); err != nil {
					return err
				}
			}
			if err := writeFile(root, local, h, tr); err != nil {
				return err
			}
		case tar.TypeXGlobalHeader:
			// pax metadata, not a file.
		default:
			return fmt.Errorf("%w: entry %q is a %s; only regular files and directories are unpacked", ErrInvalid, h.Name, typeName(h.Typeflag))
		}
	}
	return nil
}

// entryName cleans a tar entry's name, refusing one that is absolute or
// climbs out with "..".
func entryName(raw string) (string, error) {
	n := strings.TrimPrefix(raw, "./")
	n = strings.TrimSuffix(n, "/")
	if n == "" || n == "." {
		return "", nil
	}
	if path.IsAbs(n) || strings.Contains(n, "\\") || !filepath.IsLocal(filepath.FromSlash(n)) || path.Clean(n) != n {
		return "", fmt.Errorf("%w: entry %q is not a relative path inside the archive", ErrInvalid, raw)
	}
	return n, nil
}

func writeFile(root *os.Root, name string, h *tar.Header, r io.Reader) (err error) {
	perm := os.FileMode(0o644)
	if h.Mode&0o111 != 0 {
		perm = 0o755
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: entry %q appears twice", ErrInvalid, h.Name)
		}
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	// The header's size is what the tar reader delivers; the limit was
	// checked against it.
	_, err = io.Copy(f, r)
	return err
}

func typeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "FIFO"
	}
	return fmt.Sprintf("tar entry of type %q", t)
}
