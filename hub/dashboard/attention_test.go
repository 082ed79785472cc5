package dashboard_test

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

var tileRE = regexp.MustCompile(`<a class="t ([a-z]+)( named)?" href="/clusters/([^"]+)"`)

// tiles are the overview's tiles in page order: cluster name and class.
func tiles(t *testing.T, body string) (names, classes []string, named int) {
	t.Helper()
	for _, m := range tileRE.FindAllStringSubmatch(body, -1) {
		names, classes = append(names, m[3]), append(classes, m[1])
		if m[2] != "" {
			named++
		}
	}
	return names, classes, named
}

// TestOverviewShowsProblemsFirst: in the fixture us-1 is offline, eu-1
// runs a Degraded application and dev-1, brought online here, runs none,
// so by name the trouble would come last; it must come first, the count of
// it must link to a view of just those clusters, and a page of few tiles
// names them.
func TestOverviewShowsProblemsFirst(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	must(t, f.store.MarkConnected(ctx, "dev-1", "hub-a", "10.0.0.3:5000", &droverv1.ClusterFacts{AgentVersion: "0.1.0"}, t0.Add(-time.Hour)))
	must(t, f.store.TouchLastSeen(ctx, []string{"dev-1"}, t0.Add(-10*time.Second)))
	b := f.browser(t)
	b.login(f.viewer)

	_, body := b.get("/?fragment=1")
	names, classes, named := tiles(t, body)
	if want := []string{"us-1", "eu-1", "dev-1"}; !slices.Equal(names, want) {
		t.Errorf("tiles in the order %v (%v), want %v: offline, then the worst health, then the rest", names, classes, want)
	}
	if named != len(names) || !strings.Contains(body, "<span>us-1</span>") {
		t.Errorf("%d of %d tiles name their cluster, want all on a page this small", named, len(names))
	}
	if !strings.Contains(body, `<a class="attn" href="/?attention=1">2 need attention</a>`) {
		t.Errorf("the count of clusters needing attention does not link to them:\n%s", body)
	}

	_, body = b.get("/?attention=1&fragment=1")
	if names, _, _ := tiles(t, body); !slices.Equal(names, []string{"us-1", "eu-1"}) {
		t.Errorf("needs-attention view shows %v, want [us-1 eu-1]", names)
	}
	if !strings.Contains(body, "2 clusters need attention, of 3") || !strings.Contains(body, `<a href="/">Show all clusters</a>`) {
		t.Errorf("needs-attention view does not say what it shows or how to leave it:\n%s", body)
	}
	// The filter combines with the others and keeps them when left.
	_, body = b.get("/?attention=1&selector=region%3Deu&fragment=1")
	if names, _, _ := tiles(t, body); !slices.Equal(names, []string{"eu-1"}) {
		t.Errorf("needs attention in region=eu: %v, want [eu-1]", names)
	}
	if !strings.Contains(body, `<a href="/?selector=region%3Deu">Show all clusters</a>`) {
		t.Errorf("leaving the needs-attention view drops the selector:\n%s", body)
	}
	_, body = b.get("/?attention=1&q=dev&fragment=1")
	if names, _, _ := tiles(t, body); len(names) != 0 || !strings.Contains(body, "No cluster needs attention among those matching the filter") {
		t.Errorf("needs attention named like dev: %v\n%s", names, body)
	}
}

// TestAppSummaryCountsOfflineAndBehind: web is placed on eu-1 (current
// commit) and us-1 (offline, at the previous commit).
func TestAppSummaryCountsOfflineAndBehind(t *testing.T) {
	f := newFixture(t)
	b := f.browser(t)
	b.login(f.viewer)
	_, body := b.get("/apps/web?fragment=1")
	for _, want := range []string{`<span class="b off">○ 1 offline</span>`, "1 behind the current release"} {
		if !strings.Contains(body, want) {
			t.Errorf("application summary lacks %q", want)
		}
	}
	_, body = b.get("/apps/api?fragment=1")
	if strings.Contains(body, "offline</span>") || strings.Contains(body, "behind the current") {
		t.Errorf("api, on one online cluster at its release, is summarised as offline or behind")
	}
}

// TestUnrelatedReleaseIsNotBehind: a release of web whose commit changed
// nothing under web's paths keeps commitWeb2's content, so eu-1, at
// commitWeb2, is not behind it, and the application's page says where
// the content comes from.
func TestUnrelatedReleaseIsNotBehind(t *testing.T) {
	f := newFixture(t)
	const unrelated = "4444444444444444444444444444444444444444"
	_, err := f.store.AddRelease(t.Context(), "web", unrelated, "main", commitWeb2, t0.Add(-time.Minute))
	must(t, err)
	b := f.browser(t)
	b.login(f.viewer)
	_, body := b.get("/apps/web?fragment=1")
	for _, want := range []string{"1 behind the current release", "<code>4444444444</code>", "content from <code>2222222222</code>: nothing under the application's paths changed since"} {
		if !strings.Contains(body, want) {
			t.Errorf("application page lacks %q:\n%s", want, body)
		}
	}
	_, body = b.get("/clusters/eu-1?fragment=1")
	if strings.Contains(body, "! behind") {
		t.Errorf("eu-1, at the content of web's release, shows as behind:\n%s", body)
	}
}

// TestPagesAreCompressed: pages go gzip-compressed to a browser that
// accepts it; the live stream does not, so its events are never held back.
func TestPagesAreCompressed(t *testing.T) {
	f := newFixture(t)
	b := f.browser(t)
	b.login(f.viewer)

	get := func(ctx context.Context, path string) *http.Response {
		req, err := http.NewRequestWithContext(ctx, "GET", f.srv.URL+path, nil)
		must(t, err)
		// Set by hand, the header makes the client hand over the body as
		// sent rather than decompress it behind the test's back.
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := b.client.Do(req)
		must(t, err)
		return resp
	}
	resp := get(t.Context(), "/")
	defer resp.Body.Close()
	if got := resp.Header.Get("Content-Encoding"); resp.StatusCode != 200 || got != "gzip" {
		t.Fatalf("GET / = %d with Content-Encoding %q, want 200 gzip", resp.StatusCode, got)
	}
	zr, err := gzip.NewReader(resp.Body)
	must(t, err)
	page, err := io.ReadAll(zr)
	must(t, err)
	if !strings.Contains(string(page), "<!doctype html>") || !strings.Contains(string(page), `href="/clusters/eu-1"`) {
		t.Errorf("decompressed page is not the overview: %.200s", page)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	live := get(ctx, "/live")
	defer live.Body.Close()
	if got := live.Header.Get("Content-Encoding"); live.StatusCode != 200 || got != "" {
		t.Errorf("GET /live = %d with Content-Encoding %q, want 200 uncompressed", live.StatusCode, got)
	}
}
