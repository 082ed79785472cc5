package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/server"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// startReplicaOf starts a second hub on a's database, sharing a's CA and
// credential key as every replica does, with its own data directory.
func startReplicaOf(t *testing.T, a *testHub, replica string) *testHub {
	t.Helper()
	return startHub(t, func(c *server.Config) {
		c.Replica = replica
		c.DatabaseURL = a.cfg.DatabaseURL
		c.CACertFile = filepath.Join(a.cfg.DataDir, "pki", pki.CACertFile)
		c.CAKeyFile = filepath.Join(a.cfg.DataDir, "pki", pki.CAKeyFile)
		c.SecretKeyFile = filepath.Join(a.cfg.DataDir, "secret.key")
		// Only the first replica creates the initial admin token; the
		// test signs in to this one with it.
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.DataDir, "admin-token"), []byte(a.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRevokeClosesStreamOnOtherReplica: a cluster revoked through one
// replica's admin API loses the stream another replica holds for it, and
// leaves that replica's fleet.
func TestRevokeClosesStreamOnOtherReplica(t *testing.T) {
	a := startHub(t, func(c *server.Config) { c.Replica = "a" })
	b := startReplicaOf(t, a, "b")

	tok := a.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "prod"}})
	agent := b.mustRegister(t, tok, "edge")
	s := agent.connect(t, "")
	s.nextAssignment(t)
	eventually(t, "edge in a's fleet", func() bool { return a.Fleet().Assignment("edge") != nil })

	a.mustAPI(t, "POST", "/api/v1/clusters/edge/revoke", nil, nil)
	s.endsRevoked(t, "the stream b holds for a cluster revoked through a")
	eventually(t, "edge out of b's fleet", func() bool { return b.Fleet().Assignment("edge") == nil })
}

// TestResyncClosesStreamOfClusterRevokedUnheard: a replica that missed a
// revocation (its listening connection was down) closes the stream when it
// resyncs after reconnecting.
func TestResyncClosesStreamOfClusterRevokedUnheard(t *testing.T) {
	ctx := context.Background()
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{})
	s := h.mustRegister(t, tok, "edge").connect(t, "")
	s.nextAssignment(t)

	db, err := pgx.Connect(ctx, h.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	// Revoked behind the hubs' backs: no notification.
	if _, err := db.Exec(ctx, `UPDATE clusters SET revoked = true WHERE name = 'edge'`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.errc:
		t.Fatalf("the stream ended before the hub could know: %v", err)
	default:
	}
	// The listening connection drops; the hub reconnects and resyncs.
	var n int
	if err := db.QueryRow(ctx, `
		SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name LIKE 'drover-hub listener %') t`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d listening connections (%v), want 1", n, err)
	}
	s.endsRevoked(t, "the stream of a cluster revoked while the hub was not listening, after the hub resynced,")
}

// endsRevoked waits for the stream to end as the hub ends the stream of a
// revoked cluster; what names the stream in the failure.
func (s *stream) endsRevoked(t *testing.T, what string) {
	t.Helper()
	select {
	case err := <-s.errc:
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("%s ended with %v, want PermissionDenied saying the certificate was revoked", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s stayed open", what)
	}
}
