package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// storeWithStatuses returns a store with clusters c1 and c2 and sts
// written.
func storeWithStatuses(t *testing.T, sts ...*droverv1.ApplicationStatus) *Store {
	t.Helper()
	s := newStore(t)
	registerClusters(t, s, nil, "c1", "c2")
	if err := s.WriteStatuses(context.Background(), sts); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}
	return s
}

// makeStatus is a status of app on cluster with n resources; gen varies
// the content.
func makeStatus(cluster, app string, n, gen int) *droverv1.ApplicationStatus {
	st := &droverv1.ApplicationStatus{
		Cluster:     cluster,
		Application: app,
		Commit:      fmt.Sprintf("%040x", gen),
		Sync:        droverv1.SyncState_SYNC_STATE_SYNCED,
		Health:      droverv1.Health_HEALTH_HEALTHY,
		Message:     fmt.Sprintf("generation %d", gen),
		ObservedAt:  ts(testNow.Add(time.Duration(gen) * time.Second)),
	}
	for i := 0; i < n; i++ {
		st.Resources = append(st.Resources, &droverv1.ResourceStatus{
			Group: "apps", Version: "v1", Kind: "Deployment", Namespace: app,
			Name:    fmt.Sprintf("%s-%d", app, i),
			Health:  droverv1.Health(1 + (i+gen)%6),
			Message: fmt.Sprintf("Deployment %s-%d: 3/3 replicas available (gen %d)", app, i, gen),
			Drifted: (i+gen)%7 == 0,
		})
	}
	return st
}

func TestWriteStatuses(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	registerClusters(t, s, nil, "c1", "c2")

	dirty := makeStatus("c2", "api", 2, 1)
	dirty.Message = "bad\x00message"
	dirty.Resources[1].Message = "nul\x00inside"

	batch := []*droverv1.ApplicationStatus{
		makeStatus("c1", "web", 3, 1),
		makeStatus("c1", "api", 0, 1),
		makeStatus("c1", "web", 5, 2), // later duplicate: wins
		makeStatus("gone", "web", 1, 1),
		{Cluster: "c1"}, // no application: dropped
		nil,
		dirty,
	}
	if err := s.WriteStatuses(ctx, batch); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}

	cleaned := proto.Clone(dirty).(*droverv1.ApplicationStatus)
	cleaned.Message = "badmessage"
	cleaned.Resources[1].Message = "nulinside"
	want := map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "api", 0, 1), makeStatus("c1", "web", 5, 2)},
		"c2": {cleaned},
	}
	checkStatuses(t, s, want)

	// An upsert replaces the row, resources included.
	if err := s.WriteStatuses(ctx, []*droverv1.ApplicationStatus{makeStatus("c1", "web", 1, 3)}); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}
	want["c1"][1] = makeStatus("c1", "web", 1, 3)
	checkStatuses(t, s, want)

	sts, err := s.StatusesForApplication(ctx, "api")
	if err != nil || len(sts) != 2 || sts[0].GetCluster() != "c1" || sts[1].GetCluster() != "c2" {
		t.Errorf("StatusesForApplication(api) = %v, %v", sts, err)
	}

	counts, err := s.ApplicationStatusCounts(ctx)
	if err != nil {
		t.Fatalf("ApplicationStatusCounts: %v", err)
	}
	if c := counts["api"]; c == nil || c.Health[droverv1.Health_HEALTH_HEALTHY] != 2 || c.Sync[droverv1.SyncState_SYNC_STATE_SYNCED] != 2 {
		t.Errorf("counts[api] = %+v", c)
	}
	byCluster, err := s.ClusterStatusCounts(ctx, []string{"c1", "nope"})
	if err != nil {
		t.Fatalf("ClusterStatusCounts: %v", err)
	}
	if c := byCluster["c1"]; len(byCluster) != 1 || c.Health[droverv1.Health_HEALTH_HEALTHY] != 2 {
		t.Errorf("ClusterStatusCounts = %+v", byCluster)
	}

	// A full resync that no longer lists web drops its row.
	if err := s.DeleteStatuses(ctx, "c1", []string{"api"}); err != nil {
		t.Fatalf("DeleteStatuses: %v", err)
	}
	want["c1"] = want["c1"][:1]
	checkStatuses(t, s, want)
	if err := s.DeleteStatuses(ctx, "c2", nil); err != nil {
		t.Fatalf("DeleteStatuses: %v", err)
	}
	want["c2"] = nil
	checkStatuses(t, s, want)
}

func checkStatuses(t *testing.T, s *Store, want map[string][]*droverv1.ApplicationStatus) {
	t.Helper()
	for cluster, w := range want {
		got, err := s.GetStatuses(context.Background(), cluster)
		if err != nil {
			t.Fatalf("GetStatuses(%s): %v", cluster, err)
		}
		if len(got) != len(w) {
			t.Errorf("GetStatuses(%s) = %d statuses, want %d", cluster, len(got), len(w))
			continue
		}
		for i := range w {
			if !proto.Equal(got[i], w[i]) {
				t.Errorf("GetStatuses(%s)[%d] =\n%v\nwant\n%v", cluster, i, got[i], w[i])
			}
		}
	}
}

func TestWriteStatusesBigBatch(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	const (
		clusters  = 50
		apps      = 100
		resources = 20
	)
	var names []string
	for c := 0; c < clusters; c++ {
		names = append(names, fmt.Sprintf("c%02d", c))
	}
	registerClusters(t, s, nil, names...)
	var batch []*droverv1.ApplicationStatus
	for _, c := range names {
		for a := 0; a < apps; a++ {
			batch = append(batch, makeStatus(c, fmt.Sprintf("app-%03d", a), resources, a))
		}
	}
	if err := s.WriteStatuses(ctx, batch); err != nil {
		t.Fatalf("WriteStatuses(%d): %v", len(batch), err)
	}
	var rows, entries int
	if err := s.pool.QueryRow(ctx, `SELECT count(*), sum(jsonb_array_length(resources)) FROM app_status`).Scan(&rows, &entries); err != nil {
		t.Fatalf("count: %v", err)
	}
	if rows != clusters*apps || entries != clusters*apps*resources {
		t.Errorf("stored %d rows with %d resources, want %d with %d", rows, entries, clusters*apps, clusters*apps*resources)
	}
	for _, i := range []int{0, 1234, 2500, 4999} {
		want := batch[i]
		got, err := s.GetStatuses(ctx, want.GetCluster())
		if err != nil {
			t.Fatalf("GetStatuses: %v", err)
		}
		found := false
		for _, st := range got {
			if st.GetApplication() == want.GetApplication() {
				found = true
				if !proto.Equal(st, want) {
					t.Errorf("status %d =\n%v\nwant\n%v", i, st, want)
				}
			}
		}
		if !found {
			t.Errorf("status %d (%s on %s) missing", i, want.GetApplication(), want.GetCluster())
		}
	}
}

// A status of an application that left its cluster's assignment is kept,
// marked removing, and counts nowhere until the agent confirms the
// removal; placed there again, it is current again.
func TestRemovingStatusesCountNowhere(t *testing.T) {
	s := storeWithStatuses(t, makeStatus("c1", "old", 0, 1), makeStatus("c1", "web", 0, 1), makeStatus("c2", "old", 0, 1))
	ctx := context.Background()
	mark := func(assigned map[string][]string, want int64) {
		t.Helper()
		if n, err := s.MarkRemoving(ctx, assigned); err != nil || n != want {
			t.Fatalf("MarkRemoving(%v) = %d, %v; want %d changed", assigned, n, err, want)
		}
	}
	mark(map[string][]string{"c1": {"web"}}, 1)
	// Marking what is marked changes nothing.
	mark(map[string][]string{"c1": {"web"}}, 0)
	// A late status of the application does not make it current again.
	if err := s.WriteStatuses(ctx, []*droverv1.ApplicationStatus{makeStatus("c1", "old", 0, 2)}); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}
	removing := makeStatus("c1", "old", 0, 2)
	removing.Removing = true
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {removing, makeStatus("c1", "web", 0, 1)},
		"c2": {makeStatus("c2", "old", 0, 1)},
	})
	for cluster, want := range map[string]bool{"c1": true, "c2": false} {
		if got, err := s.Removing(ctx, cluster); err != nil || got != want {
			t.Errorf("Removing(%s) = %v, %v; want %v", cluster, got, err, want)
		}
	}

	healthy := droverv1.Health_HEALTH_HEALTHY
	byCluster, err := s.ClusterStatusCounts(ctx, []string{"c1", "c2"})
	if err != nil {
		t.Fatalf("ClusterStatusCounts: %v", err)
	}
	if got := byCluster["c1"].Health[healthy]; got != 1 {
		t.Errorf("c1 counts %d healthy, want 1 (web; old is being removed)", got)
	}
	byApp, err := s.ApplicationStatusCounts(ctx)
	if err != nil {
		t.Fatalf("ApplicationStatusCounts: %v", err)
	}
	if got := byApp["old"].Health[healthy]; got != 1 {
		t.Errorf("old counts %d healthy clusters, want 1 (c2; c1 is removing it)", got)
	}
	ov, err := s.OverviewClusters(ctx, nil)
	if err != nil {
		t.Fatalf("OverviewClusters: %v", err)
	}
	for _, c := range ov {
		if c.Name == "c1" && (c.Apps != 1 || c.Healthy != 1) {
			t.Errorf("overview of c1: %d apps, %d healthy; want 1 and 1", c.Apps, c.Healthy)
		}
	}

	// Placed there again: current again.
	mark(map[string][]string{"c1": {"old", "web"}}, 1)
	checkStatuses(t, s, map[string][]*droverv1.ApplicationStatus{
		"c1": {makeStatus("c1", "old", 0, 2), makeStatus("c1", "web", 0, 1)},
	})
}
