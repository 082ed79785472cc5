package ctl_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/adminapi"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// get replicas prints the replicas with their state, streams and jobs, as
// the hub's API lists them; a viewer may run it.
func TestGetReplicas(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	ctx := context.Background()
	for _, name := range []string{"edge-1", "edge-2"} {
		h.registerCluster(t, name, nil)
		if err := h.Store().MarkConnected(ctx, name, "hub-test", "192.0.2.7:4000", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	viewer, _, err := h.Store().CreateAPIToken(ctx, "watcher", adminapi.RoleViewer, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(t, h)
	// The replica records the addresses it listens on: ports of the
	// system's choosing, always five digits, replaced with as many
	// letters so the columns stay as printed.
	s.replace(h.AgentAddr(), "127.0.0.1:AAAAA", h.HTTPAddr(), "127.0.0.1:HHHHH")
	s.login()

	// The job keeper takes the event retention job in the background;
	// the transcript starts once it holds it.
	s.noRecord = true
	testbed.Eventually(t, "hub-test holds the retention job", time.Minute, func() (bool, string) {
		r := s.must("", "get", "replicas", "-o", "json", "--token", viewer)
		var resp droverv1.ListReplicasResponse
		if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil {
			t.Fatalf("get replicas -o json: %v\n%s", err, r.stdout)
		}
		return len(resp.GetReplicas()) == 1 && slices.Equal(resp.GetReplicas()[0].GetJobs(), []string{"retention"}), r.stdout
	})
	s.noRecord = false

	r := s.must("", "get", "replicas")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME STATE STREAMS JOBS VERSION STARTED ADDRESS" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "hub-test alive 2 1 ") {
		t.Errorf("get replicas printed:\n%s\nwant a header and hub-test alive with 2 streams and 1 job", r.stdout)
	}
	s.must("", "get", "replica", "-o", "wide")
	s.fails(2, "", "get", "replicas", "hub-test")
	s.fails(2, "", "get", "replicas", "-o", "table")
	s.golden("replicas")
}
