package render

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/ignore"
)

// maxLinkHops bounds the symbolic links to directories followed on one
// path of a chart: links inside the chart may loop.
const maxLinkHops = 4

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// chartOrigin says where the files of a loaded chart came from, so that
// errors and objects name a file of the repository.
type chartOrigin struct {
	// origins maps each template and file Helm loaded to the repository
	// file it came from. The pointers survive what Helm does to a chart
	// after loading (aliased dependencies are copies sharing the files).
	origins map[*common.File]fileOrigin
}

// fileOrigin is a file of a chart: a file of the repository, or a file
// inside a .tgz archive of the repository.
type fileOrigin struct {
	path string // repository-relative, '/'-separated
	// inArchive is the file's name in the archive at path, or "".
	inArchive string
}

// loadChart loads the chart in the directory chartDir of the repository
// (r is confined to that directory): every file is read through r and
// charged to b, then Helm's loader assembles the chart from memory. Helm
// never opens a file itself, so nothing outside the chart can be read,
// whatever a link or a template asks for.
func loadChart(ctx context.Context, r *os.Root, chartDir string, b *budget) (*chart.Chart, *chartOrigin, error) {
	files, err := readChartDir(ctx, r, chartDir, b)
	if err != nil {
		return nil, nil, err
	}
	co := &chartOrigin{origins: make(map[*common.File]fileOrigin)}
	c, err := assemble(files, func(name string) fileOrigin {
		return fileOrigin{path: path.Join(chartDir, name)}
	}, co, b)
	if err != nil {
		return nil, nil, err
	}
	return c, co, nil
}

// readChartDir reads the chart's files, skipping what its .helmignore
// names, as `helm package` and `helm template` do. Names are relative to
// the chart, '/'-separated.
func readChartDir(ctx context.Context, r *os.Root, chartDir string, b *budget) ([]*archive.BufferedFile, error) {
	rules := ignore.Empty()
	if data, err := readChartFile(r, ignore.HelmIgnore, chartDir, b); err == nil {
		if rules, err = ignore.Parse(bytes.NewReader(data)); err != nil {
			return nil, errorf(path.Join(chartDir, ignore.HelmIgnore), 0, "%v", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	rules.AddDefaults()

	fsys := r.FS()
	var files []*archive.BufferedFile
	var walk func(dir string, hops int) error
	walk = func(dir string, hops int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			return errorf(path.Join(chartDir, dir), 0, "cannot read directory: %v", pathErrCause(err))
		}
		for _, e := range entries {
			name := path.Join(dir, e.Name())
			repoPath := path.Join(chartDir, name)
			info, err := e.Info()
			if err != nil {
				return errorf(repoPath, 0, "cannot read: %v", pathErrCause(err))
			}
			linkHops := hops
			if e.Type()&fs.ModeSymlink != 0 {
				if hops >= maxLinkHops {
					return errorf(repoPath, 0, "more than %d symbolic links to directories on the way; do they loop?", maxLinkHops)
				}
				// Stat follows the link through the os.Root, which
				// refuses one leaving the chart.
				if info, err = fs.Stat(fsys, name); err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						return errorf(repoPath, 0, "symbolic link to a file that does not exist")
					}
					return errorf(repoPath, 0, "symbolic link leads outside the chart or is absolute; a chart's links must stay inside its directory and be relative")
				}
				linkHops++
			}
			if rules.Ignore(name, info) {
				continue
			}
			switch {
			case info.IsDir():
				if err := walk(name, linkHops); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				data, err := readChartFile(r, name, chartDir, b)
				if err != nil {
					return err
				}
				files = append(files, &archive.BufferedFile{Name: name, ModTime: info.ModTime(), Data: bytes.TrimPrefix(data, utf8BOM)})
			default:
				return errorf(repoPath, 0, "not a regular file")
			}
		}
		return nil
	}
	if err := walk(".", 0); err != nil {
		return nil, err
	}
	return files, nil
}

// readChartFile reads the file name of the chart through r, charged to b.
// A file that does not exist is fs.ErrNotExist, unwrapped for errors.Is.
func readChartFile(r *os.Root, name, chartDir string, b *budget) ([]byte, error) {
	p := path.Join(chartDir, name)
	f, err := r.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, errorf(p, 0, "cannot open, or a symbolic link on the way leads outside the chart: %v", pathErrCause(err))
	}
	defer f.Close()
	return readLimited(f, p, b)
}

// assemble builds a chart from its files with Helm's loader, except its
// subcharts (charts/NAME/ and charts/*.tgz), which it assembles itself
// so that an archive is unpacked within the render's limits and every
// file keeps its origin. where gives the origin of a file of this chart.
func assemble(files []*archive.BufferedFile, where func(string) fileOrigin, co *chartOrigin, b *budget) (*chart.Chart, error) {
	var own []*archive.BufferedFile
	subs := make(map[string][]*archive.BufferedFile)
	for _, f := range files {
		rest, ok := strings.CutPrefix(f.Name, "charts/")
		if !ok || path.Ext(f.Name) == ".prov" {
			own = append(own, f)
			continue
		}
		sub, _, _ := strings.Cut(rest, "/")
		subs[sub] = append(subs[sub], f)
	}
	c, err := loader.LoadFiles(own)
	if err != nil {
		// "cannot load values.yaml: ..." names the file; Chart.yaml
		// otherwise, whose metadata failed.
		name := "Chart.yaml"
		if rest, ok := strings.CutPrefix(err.Error(), "cannot load "); ok {
			if n, _, ok := strings.Cut(rest, ":"); ok {
				name = n
			}
		}
		origin := where(name)
		return nil, &Error{Path: origin.path, Msg: inArchive(origin, err.Error())}
	}
	for _, list := range [][]*common.File{c.Templates, c.Files, c.Raw} {
		for _, f := range list {
			co.origins[f] = where(f.Name)
		}
	}

	// Helm loads subcharts in map order; sorted here so the same chart
	// fails the same way every time.
	names := make([]string, 0, len(subs))
	for n := range subs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if strings.IndexAny(n, "_.") == 0 {
			// Helm skips these: a way to keep a subchart out.
			continue
		}
		var sc *chart.Chart
		if path.Ext(n) == ".tgz" {
			f := subs[n][0]
			if f.Name != "charts/"+n {
				return nil, errorf(where(f.Name).path, 0, "a directory named like an archive in charts/")
			}
			sc, err = assembleArchive(f.Data, where(f.Name), co, b)
		} else {
			var sf []*archive.BufferedFile
			for _, f := range subs[n] {
				_, rel, ok := strings.Cut(strings.TrimPrefix(f.Name, "charts/"), "/")
				if !ok {
					return nil, errorf(where(f.Name).path, 0, "neither a chart directory nor a chart archive (.tgz) in charts/")
				}
				sf = append(sf, &archive.BufferedFile{Name: rel, ModTime: f.ModTime, Data: f.Data})
			}
			prefix := "charts/" + n + "/"
			sc, err = assemble(sf, func(name string) fileOrigin { return where(prefix + name) }, co, b)
		}
		if err != nil {
			return nil, err
		}
		c.AddDependency(sc)
	}
	// As `helm install` does: a dependency that is declared but not
	// vendored would otherwise be left out without a word.
	for _, d := range c.Metadata.Dependencies {
		if !slices.ContainsFunc(c.Dependencies(), func(sc *chart.Chart) bool { return sc.Name() == d.Name }) {
			origin := where("Chart.yaml")
			return nil, &Error{Path: origin.path, Msg: inArchive(origin, fmt.Sprintf("dependency %q is not in charts/; vendor it (helm dependency build) and commit it", d.Name))}
		}
	}
	return c, nil
}

// assembleArchive unpacks a vendored subchart archive like Helm does,
// but charging every file to b: a small archive can unpack to any size
// (a gzip bomb), and each file is checked against the limits before it is
// read.
func assembleArchive(data []byte, origin fileOrigin, co *chartOrigin, b *budget) (*chart.Chart, error) {
	fail := func(format string, args ...any) error {
		return &Error{Path: origin.path, Msg: inArchive(origin, fmt.Sprintf(format, args...))}
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fail("not a gzip archive: %v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var files []*archive.BufferedFile
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fail("not a valid chart archive: %v", err)
		}
		if hd.Typeflag != tar.TypeReg {
			// Directories, and links: Helm would read a link as an
			// empty file, which no chart needs.
			continue
		}
		// The first component is the chart's directory in the archive.
		_, n, _ := strings.Cut(strings.ReplaceAll(hd.Name, `\`, "/"), "/")
		n = path.Clean(n)
		if n == "." || path.IsAbs(n) || n == ".." || strings.HasPrefix(n, "../") {
			return nil, fail("the archive holds %q, outside the chart's directory", hd.Name)
		}
		// Charged at the size the archive declares, which is all a
		// reader of it can get.
		if err := b.read(origin.path, hd.Size); err != nil {
			var re *Error
			if errors.As(err, &re) {
				re.Msg = inArchive(fileOrigin{path: origin.path, inArchive: path.Join(origin.inArchive, n)}, re.Msg)
			}
			return nil, err
		}
		content := make([]byte, hd.Size)
		if _, err := io.ReadFull(tr, content); err != nil {
			return nil, fail("%s: %v", n, err)
		}
		files = append(files, &archive.BufferedFile{Name: n, ModTime: hd.ModTime, Data: bytes.TrimPrefix(content, utf8BOM)})
	}
	if len(files) == 0 {
		return nil, fail("no files in the chart archive")
	}
	return assemble(files, func(name string) fileOrigin {
		return fileOrigin{path: origin.path, inArchive: path.Join(origin.inArchive, name)}
	}, co, b)
}

// inArchive prefixes msg with the file's name in its archive, if it is in one.
func inArchive(o fileOrigin, msg string) string {
	if o.inArchive == "" {
		return msg
	}
	return o.inArchive + ": " + msg
}
