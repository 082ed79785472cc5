package server_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// replicaList is GET /api/v1/replicas (with ?name= when name is set) from
// h, read with token.
func replicaList(t *testing.T, h *testHub, token, name string) *droverv1.ListReplicasResponse {
	t.Helper()
	path := "/api/v1/replicas"
	if name != "" {
		path += "?name=" + name
	}
	var resp droverv1.ListReplicasResponse
	if code, raw := h.api(t, token, "GET", path, nil, &resp); code != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", path, code, raw)
	}
	return &resp
}

// summary is a replica list in one comparable line: name state
// streams jobs, for each replica.
func summary(resp *droverv1.ListReplicasResponse) string {
	var parts []string
	for _, r := range resp.GetReplicas() {
		parts = append(parts, fmt.Sprintf("%s %s streams=%d jobs=%v", r.GetName(), r.GetState(), r.GetStreams(), r.GetJobs()))
	}
	return strings.Join(parts, "; ")
}

// Two hubs on one database list the same replicas with the same streams
// and jobs, whichever answers; a viewer may read them; a replica that
// heartbeats but is not in the gossip is suspect, and a stopped one gone.
// The metrics count the same states and this replica's jobs.
func TestListReplicas(t *testing.T) {
	db := testbed.Postgres(t)
	addrA, addrB := testbed.FreeAddr(t), testbed.FreeAddr(t)
	rawA, err := startReplica(t, db, "", "hub-a", addrA, addrB)
	if err != nil {
		t.Fatalf("start hub-a: %v", err)
	}
	rawB, err := startReplica(t, db, "", "hub-b", addrB, addrA)
	if err != nil {
		t.Fatalf("start hub-b: %v", err)
	}
	ctx := context.Background()
	admin, _, err := rawA.Store().CreateAPIToken(ctx, "ops", adminapi.RoleAdmin, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	viewer, _, err := rawA.Store().CreateAPIToken(ctx, "watcher", adminapi.RoleViewer, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, b := &testHub{Hub: rawA, token: admin}, &testHub{Hub: rawB, token: admin}

	// One agent streams to hub-b.
	tok := b.joinToken(t, &droverv1.CreateJoinTokenRequest{Reusable: true})
	b.mustRegister(t, tok, "edge-1").connect(t, "").nextAssignment(t)

	// Once both gossip with each other and the jobs have settled (the
	// event retention job held by exactly one of them), both answer alike.
	var fromA, fromB *droverv1.ListReplicasResponse
	testbed.Eventually(t, "both replicas alive, the stream on hub-b, retention held once, and the same answer from both", time.Minute, func() (bool, string) {
		fromA, fromB = replicaList(t, a, viewer, ""), replicaList(t, b, viewer, "")
		rs := fromA.GetReplicas()
		if len(rs) != 2 || rs[0].GetName() != "hub-a" || rs[1].GetName() != "hub-b" {
			return false, summary(fromA)
		}
		retention := 0
		for _, r := range rs {
			if r.GetState() != adminapi.ReplicaAlive {
				return false, summary(fromA)
			}
			if slices.Contains(r.GetJobs(), "retention") {
				retention++
			}
		}
		return retention == 1 && rs[0].GetStreams() == 0 && rs[1].GetStreams() == 1 && summary(fromA) == summary(fromB),
			"hub-a says " + summary(fromA) + "\nhub-b says " + summary(fromB)
	})
	if fromA.GetAnsweredBy() != "hub-a" || fromB.GetAnsweredBy() != "hub-b" {
		t.Errorf("answered_by %q and %q, want hub-a and hub-b", fromA.GetAnsweredBy(), fromB.GetAnsweredBy())
	}
	for _, r := range fromA.GetReplicas() {
		if r.GetVersion() == "" || r.GetStartedAt() == nil || r.GetHeartbeatAt() == nil || r.GetPeerAddr() == "" || len(r.GetClusters()) != 0 {
			t.Errorf("replica %s: version %q, started %v, heartbeat %v, gossip %q, clusters %v; want the first four set and no clusters in the full list",
				r.GetName(), r.GetVersion(), r.GetStartedAt(), r.GetHeartbeatAt(), r.GetPeerAddr(), r.GetClusters())
		}
	}
	// The jobs each replica reports are the leases its keeper holds.
	leases, err := rawA.Store().ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string][]string{}
	for _, l := range leases {
		if l.Expires.After(time.Now()) {
			held[l.Holder.Replica] = append(held[l.Holder.Replica], l.Job)
		}
	}
	for _, r := range fromA.GetReplicas() {
		if !slices.Equal(r.GetJobs(), held[r.GetName()]) {
			t.Errorf("replica %s reports jobs %v, its leases are %v", r.GetName(), r.GetJobs(), held[r.GetName()])
		}
	}

	// One replica asked for by name comes with its clusters; an unknown
	// name is a clear 404 that changes nothing.
	one := replicaList(t, a, viewer, "hub-b")
	if len(one.GetReplicas()) != 1 || !slices.Equal(one.GetReplicas()[0].GetClusters(), []string{"edge-1"}) {
		t.Errorf("?name=hub-b: %v, want hub-b with clusters [edge-1]", one.GetReplicas())
	}
	if code, raw := a.api(t, viewer, "GET", "/api/v1/replicas?name=hub-z", nil, nil); code != http.StatusNotFound || !strings.Contains(raw, `replica \"hub-z\": not found`) {
		t.Errorf("?name=hub-z: HTTP %d %s, want 404 naming hub-z", code, raw)
	}
	if code, _ := a.api(t, "", "GET", "/api/v1/replicas", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("without a token: HTTP %d, want 401", code)
	}

	// A replica that heartbeats to the database but is not in the gossip
	// (cut off from the others) is suspect.
	if err := rawA.Store().ClaimReplica(ctx, store.Replica{Name: "hub-c", Instance: "cut-off", AgentAddr: "10.0.0.3:8443"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// It keeps heartbeating as a live replica does, however slow the
	// rest of the test.
	hbCtx, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-time.After(time.Second):
			}
			if err := rawA.Store().ReplicaHeartbeat(hbCtx, "hub-c", "cut-off"); err != nil && hbCtx.Err() == nil {
				t.Errorf("hub-c's heartbeat: %v", err)
				return
			}
		}
	}()
	t.Cleanup(func() { stopHB(); <-hbDone })
	states := func(resp *droverv1.ListReplicasResponse) map[string]string {
		m := map[string]string{}
		for _, r := range resp.GetReplicas() {
			m[r.GetName()] = r.GetState()
		}
		return m
	}
	if got := states(replicaList(t, a, viewer, "")); got["hub-c"] != adminapi.ReplicaSuspect {
		t.Errorf("hub-c, heartbeating outside the gossip: states %v, want suspect", got)
	}

	// Each replica's metrics count the states as its list does, and the
	// jobs it holds; between them they hold retention.
	testbed.Eventually(t, "the replicas' metrics", time.Minute, func() (bool, string) {
		var got []float64
		total := 0
		for _, h := range []*testHub{a, b} {
			f := h.scrape(t)
			mine := len(replicaList(t, h, viewer, h.Replica()).GetReplicas()[0].GetJobs())
			total += mine
			got = append(got,
				value(f, "drover_hub_replicas", map[string]string{"state": "alive"}),
				value(f, "drover_hub_replicas", map[string]string{"state": "suspect"}),
				value(f, "drover_hub_replicas", map[string]string{"state": "gone"}),
				value(f, "drover_hub_jobs_held", nil)-float64(mine))
		}
		return total > 0 && slices.Equal(got, []float64{2, 1, 0, 0, 2, 1, 0, 0}),
			fmt.Sprintf("alive, suspect, gone, jobs held minus leases listed: hub-a %v, hub-b %v; leases listed %d", got[:4], got[4:], total)
	})

	// A change made on hub-b reaches hub-a as a notification, which its
	// metrics count.
	before := value(a.scrape(t), "drover_hub_notifications_received_total", nil)
	b.mustAPI(t, "PATCH", "/api/v1/clusters/edge-1/labels", map[string]any{"set": map[string]string{"ring": "canary"}}, nil)
	testbed.Eventually(t, "hub-a counts hub-b's notification", time.Minute, func() (bool, string) {
		got := value(a.scrape(t), "drover_hub_notifications_received_total", nil)
		return before >= 0 && got > before, fmt.Sprintf("received %v, %v before", got, before)
	})

	// hub-b stops: it is gone.
	if err := rawB.Close(); err != nil {
		t.Fatalf("close hub-b: %v", err)
	}
	testbed.Eventually(t, "hub-b gone", time.Minute, func() (bool, string) {
		resp := replicaList(t, a, viewer, "")
		got := states(resp)
		return got["hub-b"] == adminapi.ReplicaGone && got["hub-a"] == adminapi.ReplicaAlive, summary(resp)
	})
	f := a.scrape(t)
	if alive, gone := value(f, "drover_hub_replicas", map[string]string{"state": "alive"}), value(f, "drover_hub_replicas", map[string]string{"state": "gone"}); alive != 1 || gone != 1 {
		t.Errorf("after hub-b stopped: alive %v, gone %v; want 1 and 1", alive, gone)
	}
}
