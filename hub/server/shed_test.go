package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestShedStreams: a replica sheds the streams it is asked to, the
// longest held first, each ended with Unavailable and a retry hint — also
// one that has not sent its Hello yet — and leaves the others be.
func TestShedStreams(t *testing.T) {
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Reusable: true})
	var streams []*stream
	for _, name := range []string{"one", "two", "three"} {
		s := h.mustRegister(t, tok, name).connect(t, "")
		s.nextAssignment(t)
		streams = append(streams, s)
	}
	if n := h.Shed(2, 10*time.Second); n != 2 {
		t.Fatalf("Shed(2) = %d; want 2", n)
	}
	for i, s := range streams[:2] {
		checkShed(t, s.errc, i)
	}
	select {
	case err := <-streams[2].errc:
		t.Fatalf("the newest stream was shed too: %v", err)
	default:
	}
	if n := h.Shed(2, time.Second); n != 1 {
		t.Fatalf("Shed(2) again = %d; want 1, the one stream left", n)
	}
	checkShed(t, streams[2].errc, 2)

	// A stream that has not said Hello is the hub's to shed as well.
	a := h.mustRegister(t, tok, "quiet")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet, err := h.agentConn(t, a.tlsConfig()).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the quiet stream shed", func() bool { return h.Shed(1, time.Second) == 1 })
	errc := make(chan error, 1)
	go func() { _, err := quiet.Recv(); errc <- err }()
	checkShed(t, errc, 3)

	// The metrics count every stream shed.
	if got := value(h.scrape(t), "drover_hub_agents_shed_total", nil); got != 4 {
		t.Errorf("drover_hub_agents_shed_total = %v; want 4", got)
	}
}

// checkShed checks that stream i ended as shed: Unavailable, with a delay
// to honour.
func checkShed(t *testing.T, errc <-chan error, i int) {
	t.Helper()
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatalf("stream %d was not ended", i)
	}
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Errorf("stream %d ended with %v; want Unavailable", i, err)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return
		}
	}
	t.Errorf("stream %d ended without a retry delay: %v", i, err)
}
