package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestGetClusterNotFound(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.GetCluster(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetCluster: %v, want ErrNotFound", err)
	}
	if _, _, err := s.ClusterCertSerial(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ClusterCertSerial: %v, want ErrNotFound", err)
	}
	if _, err := s.RevokeCluster(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeCluster: %v, want ErrNotFound", err)
	}
	if err := s.DeleteCluster(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteCluster: %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateClusterLabels(ctx, "nope", map[string]string{"a": "b"}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateClusterLabels: %v, want ErrNotFound", err)
	}
	if err := s.MarkConnected(ctx, "nope", "hub-0", "1.2.3.4:5", nil, testNow); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkConnected: %v, want ErrNotFound", err)
	}
	if err := s.RecordAck(ctx, "nope", "v1", "", testNow); !errors.Is(err, ErrNotFound) {
		t.Errorf("RecordAck: %v, want ErrNotFound", err)
	}
}

func TestUpdateClusterLabels(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	registerClusters(t, s, map[string]map[string]string{"c1": {"env": "dev", "old": "x", "keep": "y"}}, "c1")

	c, err := s.UpdateClusterLabels(ctx, "c1", map[string]string{"env": "prod", "example.com/region": "eu"}, []string{"old", "absent"})
	if err != nil {
		t.Fatalf("UpdateClusterLabels: %v", err)
	}
	want := map[string]string{"env": "prod", "example.com/region": "eu", "keep": "y"}
	if fmt.Sprint(c.GetLabels()) != fmt.Sprint(want) {
		t.Errorf("labels = %v, want %v", c.GetLabels(), want)
	}
	if got, _ := s.GetCluster(ctx, "c1"); fmt.Sprint(got.GetLabels()) != fmt.Sprint(want) {
		t.Errorf("stored labels = %v, want %v", got.GetLabels(), want)
	}

	tests := []struct {
		name   string
		set    map[string]string
		remove []string
		field  string
	}{
		{"bad key", map[string]string{"-bad": "x"}, nil, `set["-bad"]`},
		{"bad prefix", map[string]string{"Not_A_Domain/x": "x"}, nil, `set["Not_A_Domain/x"]`},
		{"bad value", map[string]string{"env": "a b"}, nil, `set["env"]`},
		{"long value", map[string]string{"env": string(make([]byte, 64))}, nil, `set["env"]`},
		{"bad remove key", nil, []string{"ok", "bad key"}, "remove[1]"},
		{"set and remove", map[string]string{"env": "x"}, []string{"env"}, "remove[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.UpdateClusterLabels(ctx, "c1", tt.set, tt.remove)
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Fatalf("err = %v, want a *ValidationError for %s", err, tt.field)
			}
			if got, _ := s.GetCluster(ctx, "c1"); fmt.Sprint(got.GetLabels()) != fmt.Sprint(want) {
				t.Errorf("labels changed to %v", got.GetLabels())
			}
		})
	}
}

func TestRevokeAndDeleteCluster(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	registerClusters(t, s, nil, "c1", "c2")
	c, err := s.RevokeCluster(ctx, "c1")
	if err != nil || !c.GetRevoked() {
		t.Fatalf("RevokeCluster = %v, %v", c, err)
	}
	if _, revoked, _ := s.ClusterCertSerial(ctx, "c1"); !revoked {
		t.Errorf("c1 not revoked")
	}
	if err := s.WriteStatuses(ctx, []*droverv1.ApplicationStatus{
		{Cluster: "c1", Application: "web"}, {Cluster: "c2", Application: "web"},
	}); err != nil {
		t.Fatalf("WriteStatuses: %v", err)
	}
	if err := s.DeleteCluster(ctx, "c1"); err != nil {
		t.Fatalf("DeleteCluster: %v", err)
	}
	sts, err := s.StatusesForApplication(ctx, "web")
	if err != nil || len(sts) != 1 || sts[0].GetCluster() != "c2" {
		t.Errorf("statuses after delete = %v, %v; want only c2's", sts, err)
	}
	// The name is free again.
	registerClusters(t, s, nil, "c1")
}

func TestListClustersPagination(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	const n = 250
	all := map[string]map[string]string{}
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("c%03d", i)
		l := map[string]string{
			"env":  []string{"prod", "staging", "dev"}[i%3],
			"rank": fmt.Sprint(i % 10),
		}
		if i%4 == 0 {
			l["gpu"] = "true"
		}
		if i%5 == 0 {
			l["region"] = []string{"eu", "us"}[i%2]
		}
		all[name] = l
		names = append(names, name)
	}
	registerClusters(t, s, all, names...)

	selectors := []string{
		"",
		"env=prod",
		"env==staging,gpu",
		"env in (prod,dev),!gpu",
		"env!=prod",
		"region notin (eu)",
		"gpu,region",
		"rank>6",
		"rank<2,env=dev",
		"env=none",
	}
	for _, sel := range selectors {
		for _, pageSize := range []int{7, 100, 1000} {
			t.Run(fmt.Sprintf("%q/%d", sel, pageSize), func(t *testing.T) {
				selector, err := labels.Parse(sel)
				if err != nil {
					t.Fatalf("parse %q: %v", sel, err)
				}
				var want []string
				for _, name := range names {
					if selector.Matches(labels.Set(all[name])) {
						want = append(want, name)
					}
				}
				var got []string
				token := ""
				for pages := 0; ; pages++ {
					if pages > n {
						t.Fatal("pagination does not end")
					}
					page, next, err := s.ListClusters(ctx, selector, pageSize, token)
					if err != nil {
						t.Fatalf("ListClusters: %v", err)
					}
					if len(page) > pageSize {
						t.Fatalf("page of %d clusters, page size %d", len(page), pageSize)
					}
					if next != "" && len(page) != pageSize {
						t.Fatalf("short page (%d) with a next page", len(page))
					}
					for _, c := range page {
						got = append(got, c.GetName())
					}
					if next == "" {
						break
					}
					token = next
				}
				if !slices.Equal(got, want) {
					t.Errorf("got %d clusters %v\nwant %d %v", len(got), got, len(want), want)
				}
			})
		}
	}

	t.Run("bad page token", func(t *testing.T) {
		_, _, err := s.ListClusters(ctx, nil, 10, "%%%")
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "page_token" {
			t.Errorf("err = %v, want a *ValidationError for page_token", err)
		}
	})
	t.Run("bad page size", func(t *testing.T) {
		_, _, err := s.ListClusters(ctx, nil, MaxPageSize+1, "")
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "page_size" {
			t.Errorf("err = %v, want a *ValidationError for page_size", err)
		}
	})
	t.Run("nothing selector", func(t *testing.T) {
		page, next, err := s.ListClusters(ctx, labels.Nothing(), 10, "")
		if err != nil || len(page) != 0 || next != "" {
			t.Errorf("ListClusters(Nothing) = %d clusters, %q, %v", len(page), next, err)
		}
	})
	t.Run("ListAllClusters", func(t *testing.T) {
		infos, err := s.ListAllClusters(ctx)
		if err != nil || len(infos) != n {
			t.Fatalf("ListAllClusters = %d, %v; want %d", len(infos), err, n)
		}
		i := infos[4]
		if i.Name != "c004" || i.CertSerial != "serial-c004" || i.Revoked || fmt.Sprint(i.Labels) != fmt.Sprint(all["c004"]) {
			t.Errorf("ListAllClusters[4] = %+v", i)
		}
	})
}

func TestSessionBookkeeping(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	registerClusters(t, s, nil, "c1", "c2", "c3")

	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "v0.1.0\x00"}
	connected := testNow.Add(time.Minute)
	if err := s.MarkConnected(ctx, "c1", "hub-0", "10.0.0.1:5555", facts, connected); err != nil {
		t.Fatalf("MarkConnected: %v", err)
	}
	c, err := s.GetCluster(ctx, "c1")
	if err != nil {
		t.Fatalf("GetCluster: %v", err)
	}
	if c.GetHubReplica() != "hub-0" || c.GetPeerAddress() != "10.0.0.1:5555" ||
		c.GetFacts().GetKubernetesVersion() != "v1.37.2" || c.GetFacts().GetNodeCount() != 3 ||
		c.GetFacts().GetAgentVersion() != "v0.1.0" ||
		!c.GetConnectedSince().AsTime().Equal(connected) || !c.GetLastSeen().AsTime().Equal(connected) {
		t.Errorf("after MarkConnected: %v", c)
	}

	seen := connected.Add(30 * time.Second)
	if err := s.TouchLastSeen(ctx, []string{"c1", "c2", "c2", "gone"}, seen); err != nil {
		t.Fatalf("TouchLastSeen: %v", err)
	}
	// Never backwards.
	if err := s.TouchLastSeen(ctx, []string{"c1"}, connected); err != nil {
		t.Fatalf("TouchLastSeen: %v", err)
	}
	for name, want := range map[string]*time.Time{"c1": &seen, "c2": &seen, "c3": nil} {
		c, _ := s.GetCluster(ctx, name)
		switch {
		case want == nil && c.GetLastSeen() != nil:
			t.Errorf("%s last_seen = %v, want unset", name, c.GetLastSeen().AsTime())
		case want != nil && !c.GetLastSeen().AsTime().Equal(*want):
			t.Errorf("%s last_seen = %v, want %v", name, c.GetLastSeen().AsTime(), *want)
		}
	}

	// A stale session's end leaves the newer session alone.
	if err := s.MarkDisconnected(ctx, "c1", "hub-1", connected, seen); err != nil {
		t.Fatalf("MarkDisconnected: %v", err)
	}
	if c, _ := s.GetCluster(ctx, "c1"); c.GetHubReplica() != "hub-0" {
		t.Errorf("hub_replica = %q after another replica's disconnect, want hub-0", c.GetHubReplica())
	}
	gone := seen.Add(time.Second)
	if err := s.MarkDisconnected(ctx, "c1", "hub-0", connected, gone); err != nil {
		t.Fatalf("MarkDisconnected: %v", err)
	}
	if c, _ := s.GetCluster(ctx, "c1"); c.GetHubReplica() != "" || !c.GetLastSeen().AsTime().Equal(gone) {
		t.Errorf("after disconnect: replica %q, last_seen %v", c.GetHubReplica(), c.GetLastSeen().AsTime())
	}

	if err := s.SetAssignmentVersions(ctx, map[string]string{"c1": "v1", "c2": "v2", "gone": "v3"}); err != nil {
		t.Fatalf("SetAssignmentVersions: %v", err)
	}
	if err := s.RecordAck(ctx, "c1", "v1", "", seen); err != nil {
		t.Fatalf("RecordAck: %v", err)
	}
	if err := s.RecordAck(ctx, "c1", "v2", "render web: bad yaml", seen.Add(time.Second)); err != nil {
		t.Fatalf("RecordAck (nack): %v", err)
	}
	c, _ = s.GetCluster(ctx, "c1")
	if c.GetAssignmentVersion() != "v1" || c.GetAckedVersion() != "v1" || !c.GetAckedAt().AsTime().Equal(seen) ||
		c.GetNackError() != "render web: bad yaml" {
		t.Errorf("after ack and nack: %v", c)
	}
	if err := s.RecordAck(ctx, "c1", "v2", "", seen.Add(2*time.Second)); err != nil {
		t.Fatalf("RecordAck: %v", err)
	}
	c, _ = s.GetCluster(ctx, "c1")
	if c.GetAckedVersion() != "v2" || c.GetNackError() != "" {
		t.Errorf("after a later ack: %v", c)
	}
	if c, _ := s.GetCluster(ctx, "c2"); c.GetAssignmentVersion() != "v2" {
		t.Errorf("c2 assignment_version = %q, want v2", c.GetAssignmentVersion())
	}
}
