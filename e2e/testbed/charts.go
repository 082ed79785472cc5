package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
)

// chartModTime is the time of every file in a packaged chart, so that the
// same files always package to the same bytes (and digest), as Repo.Commit
// makes the same commits.
var chartModTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// PackageChart packages the chart in files ({"Chart.yaml": ...,
// "values.yaml": ..., "templates/x.yaml": ...}) with the Helm SDK, as
// `helm package` does, and returns the .tgz. The same files give the same
// bytes.
func PackageChart(t testing.TB, files map[string]string) []byte {
	t.Helper()
	c := loadChartFiles(t, files)
	dir := t.TempDir()
	file, err := chartutil.Save(c, dir)
	if err != nil {
		t.Fatalf("testbed: package chart %s: %v", c.Name(), err)
	}
	tgz, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	return tgz
}

// loadChartFiles loads the chart in files as Helm loads a chart directory.
func loadChartFiles(t testing.TB, files map[string]string) *chart.Chart {
	t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names) // Helm keeps templates in the order given
	buffered := make([]*archive.BufferedFile, 0, len(names))
	for _, name := range names {
		buffered = append(buffered, &archive.BufferedFile{
			Name:    filepath.ToSlash(name),
			ModTime: chartModTime,
			Data:    []byte(files[name]),
		})
	}
	c, err := loader.LoadFiles(buffered)
	if err != nil {
		t.Fatalf("testbed: load chart from files %v: %v", names, err)
	}
	return c
}

// chartMetadata is the Chart.yaml of a packaged chart.
func chartMetadata(t testing.TB, tgz []byte) *chart.Metadata {
	t.Helper()
	c, err := loader.LoadArchive(bytes.NewReader(tgz))
	if err != nil {
		t.Fatalf("testbed: load packaged chart: %v", err)
	}
	return c.Metadata
}
