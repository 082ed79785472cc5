package store

import (
	"context"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// newStore opens a Store on a fresh, migrated database.
func newStore(t testing.TB, opts ...Option) *Store {
	t.Helper()
	return openStore(t, testbed.Postgres(t), opts...)
}

// openStore opens a Store on the database at url.
func openStore(t testing.TB, url string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, testlog.New(t), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// testNow is a fixed time at PostgreSQL's precision, so values compare
// equal after a round trip.
var testNow = time.Date(2031, 5, 6, 7, 8, 9, 123456000, time.UTC)

// registerClusters registers clusters by name with one reusable token per
// call; labels[name] are set afterwards.
func registerClusters(t testing.TB, s *Store, labels map[string]map[string]string, names ...string) {
	t.Helper()
	ctx := context.Background()
	token, _, err := s.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Reusable: true}, "test", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	for _, n := range names {
		if _, err := s.CreateClusterWithJoinToken(ctx, token, n, "serial-"+n, testNow); err != nil {
			t.Fatalf("register %s: %v", n, err)
		}
		if l := labels[n]; len(l) > 0 {
			if _, err := s.UpdateClusterLabels(ctx, n, l, nil); err != nil {
				t.Fatalf("label %s: %v", n, err)
			}
		}
	}
}
