package control_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// chartIndex is an index.yaml a test edits: chart web's versions and
// their digests.
type chartIndex struct {
	mu       sync.Mutex // guards versions
	versions map[string]string
}

func (c *chartIndex) set(version, digest string) {
	c.mu.Lock()
	c.versions[version] = digest
	c.mu.Unlock()
}

func (c *chartIndex) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/index.yaml" {
		http.NotFound(w, r)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprint(w, "apiVersion: v1\nentries:\n  web:\n")
	for v, d := range c.versions {
		fmt.Fprintf(w, "  - name: web\n    version: %s\n    digest: %q\n    urls: [web-%s.tgz]\n", v, d, v)
	}
}

// TestHelmSourceReleasesRevisions checks that an application on a Helm
// repository gets a release per resolved chart version, pinned as
// VERSION@sha256:DIGEST, which goes to its clusters as the commit, and
// that a new version in range makes a new release with its own content.
func TestHelmSourceReleasesRevisions(t *testing.T) {
	ctx := context.Background()
	d1, d2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	index := &chartIndex{versions: map[string]string{"1.0.0": d1, "2.0.0": strings.Repeat("f", 64)}}
	srv := httptest.NewServer(index)
	t.Cleanup(srv.Close)

	s := start(t)
	s.register(t, "prod-1", map[string]string{"env": "prod"})
	app := &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: srv.URL, Chart: "web", Version: "~1.0", Insecure: true},
		Render:    &droverv1.Render{Type: "helm"},
		Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
	}}
	stored, err := s.store.CreateApplication(ctx, app, "test")
	if err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	rev1 := "1.0.0@sha256:" + d1
	testbed.Eventually(t, "the first release on prod-1", 30*time.Second, func() (bool, string) {
		return s.commitOn("prod-1") == rev1, fmt.Sprintf("prod-1 runs %q, source error %q", s.commitOn("prod-1"), s.ctl.SourceError("web"))
	})
	if rel := s.release(t); rel.GetCommit() != rev1 || rel.GetContentCommit() != rev1 || rel.GetRef() != "~1.0" {
		t.Errorf("release %v, want commit and content %s from ~1.0", rel, rev1)
	}

	index.set("1.0.1", d2)
	rev2 := "1.0.1@sha256:" + d2
	s.refresh(t, rev2)
	if rel := s.release(t); rel.GetContentCommit() != rev2 || rel.GetNoop() {
		t.Errorf("release after 1.0.1: content %s noop %v, want its own %s", rel.GetContentCommit(), rel.GetNoop(), rev2)
	}
	if got := s.commitOn("prod-1"); got != rev2 {
		t.Errorf("prod-1 runs %s, want %s", got, rev2)
	}
	for _, a := range s.fleet.Assignment("prod-1").GetApplications() {
		if a.GetSourceType() != droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY || a.GetChart() != "web" || !a.GetInsecure() {
			t.Errorf("assignment %v does not say it is chart web of an insecure Helm repository", a)
		}
	}

	// A range nothing satisfies is the application's source error.
	stored.Spec.Source.Version = ">=3.0.0"
	if stored, err = s.store.UpdateApplication(ctx, stored, "test"); err != nil {
		t.Fatal(err)
	}
	s.ctl.ApplicationStored(ctx, stored)
	if _, _, err := s.ctl.Refresh(ctx, "web"); err == nil {
		t.Fatal("Refresh with >=3.0.0 succeeded")
	}
	want := "no version of chart web in " + srv.URL + " satisfies >=3.0.0; highest is 2.0.0"
	if got := s.ctl.SourceError("web"); got != want {
		t.Errorf("source error %q, want %q", got, want)
	}
}
