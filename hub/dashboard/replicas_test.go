package dashboard_test

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/hub/store"
)

// runReplicas records replicas in the database and keeps them
// heartbeating, as running hubs do, until the test ends.
func runReplicas(t *testing.T, st *store.Store, names ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	for _, n := range names {
		must(t, st.ClaimReplica(ctx, store.Replica{Name: n, Instance: n + "-1", AgentAddr: n + ".hub:8443", Version: "v9.9.9"}, time.Minute))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			for _, n := range names {
				if err := st.ReplicaHeartbeat(ctx, n, n+"-1"); err != nil && ctx.Err() == nil {
					t.Errorf("heartbeat of %s: %v", n, err)
					return
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// The replicas page has a row per replica with its state and streams, a
// replica's page lists its clusters, and the overview counts the alive
// replicas; a viewer sees them all.
func TestReplicaPages(t *testing.T) {
	f := newFixture(t)
	runReplicas(t, f.store, "hub-a", "hub-b")
	f.hub.mu.Lock()
	f.hub.members = []string{"hub-0", "hub-a"} // hub-b is cut off from the gossip
	f.hub.mu.Unlock()
	b := f.browser(t)
	b.login(f.viewer)

	row := func(page, name string) string {
		t.Helper()
		m := regexp.MustCompile(`(?s)<tr data-key="rep-` + name + `">.*?</tr>`).FindString(page)
		if m == "" {
			t.Fatalf("no row for %s in:\n%s", name, page)
		}
		return m
	}
	code, page := b.get("/replicas?fragment=1")
	if code != http.StatusOK {
		t.Fatalf("GET /replicas = %d:\n%s", code, page)
	}
	for name, want := range map[string][]string{
		"hub-a": {"● Alive", `<td class="streams">1</td>`, "v9.9.9", "hub-a.hub:8443"},
		"hub-b": {"! Suspect", `<td class="streams">1</td>`},
	} {
		r := row(page, name)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("row of %s lacks %q:\n%s", name, w, r)
			}
		}
	}
	code, page = b.get("/replicas/hub-a?fragment=1")
	if code != http.StatusOK || !strings.Contains(page, `<a href="/clusters/eu-1">eu-1</a>`) || strings.Contains(page, "us-1") {
		t.Errorf("GET /replicas/hub-a = %d, want eu-1 and not us-1 among its streams:\n%s", code, page)
	}
	if code, page = b.get("/replicas/hub-z"); code != http.StatusNotFound || !strings.Contains(page, `replica &#34;hub-z&#34; does not exist`) {
		t.Errorf("GET /replicas/hub-z = %d, want 404 saying it does not exist:\n%s", code, page)
	}
	_, page = b.get("/?fragment=1")
	if !strings.Contains(page, `<div class="stat hot" id="replica-count"><a href="/replicas"><span class="n">1/2</span> hub replicas alive</a></div>`) {
		t.Errorf("overview lacks 1/2 hub replicas alive, marked:\n%s", page)
	}
}
