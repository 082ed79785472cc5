package server_test

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
)

// A hub with a bad gossip key or address is refused with the
// configuration's error, before it creates anything.
func TestBadReplicaConfig(t *testing.T) {
	keyFile := func(content string) string {
		p := filepath.Join(t.TempDir(), "gossip.key")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, tc := range []struct {
		name   string
		mutate func(*server.Config)
		want   string
	}{
		{"key of a bad size", func(c *server.Config) { c.GossipKey = b64(20) }, "DROVER_GOSSIP_KEY: gossip key: 20 bytes, want 16, 24 or 32"},
		{"key not base64", func(c *server.Config) { c.GossipKey = "not base64!" }, "DROVER_GOSSIP_KEY: not base64"},
		{"key file of a bad size", func(c *server.Config) { c.GossipKeyFile = keyFile(b64(8) + "\n") }, "gossip key: 8 bytes, want 16, 24 or 32"},
		{"missing key file", func(c *server.Config) { c.GossipKeyFile = filepath.Join(t.TempDir(), "none") }, "--gossip-key-file: open"},
		{"key file and key", func(c *server.Config) { c.GossipKeyFile = keyFile(b64(32)); c.GossipKey = b64(32) }, "give one of them"},
		{"peer address without port", func(c *server.Config) { c.PeerAddr = "10.0.0.5" }, "--peer-addr: gossip address \"10.0.0.5\": want HOST:PORT"},
		{"peer address with a bad port", func(c *server.Config) { c.PeerAddr = "10.0.0.5:gossip" }, "--peer-addr: gossip address \"10.0.0.5:gossip\": bad port"},
		{"peers without port", func(c *server.Config) { c.PeerAddr = "127.0.0.1:0"; c.Peers = []string{"hub-0.hub"} }, `--peers "hub-0.hub": want HOST:PORT`},
		{"peers without peer address", func(c *server.Config) { c.Peers = []string{"127.0.0.1:7946"} }, "--peers: needs --peer-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) { startRefused(t, tc.mutate, tc.want) })
	}
}

// healthz returns a hub's /healthz status code and body.
func healthz(t *testing.T, h *server.Hub) (int, string) { return probe(t, h, "/healthz") }

// probe returns the status code and body of a hub's health or readiness
// path.
func probe(t *testing.T, h *server.Hub, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + h.HTTPAddr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// startReplica starts a hub as replica name of the database db, with its
// data in dataDir ("" for a new one), gossiping on peerAddr ("" for none).
func startReplica(t *testing.T, db, dataDir, name, peerAddr string, peers ...string) (*server.Hub, error) {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.DataDir = dataDir
	if dataDir == "" {
		cfg.DataDir = filepath.Join(t.TempDir(), "data")
	}
	cfg.DatabaseURL = db
	cfg.AgentAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1"}
	cfg.Replica, cfg.PeerAddr, cfg.Peers = name, peerAddr, peers
	cfg.GossipKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	h, err := server.Start(context.Background(), cfg, testlog.New(t).With("hub", name), io.Discard)
	if err == nil {
		t.Cleanup(func() { h.Close() })
	}
	return h, err
}

// Two hubs on one database, each naming the other as its peer: the first
// is degraded while alone, both see both once the second is up, and a
// second process under a live hub's name is refused.
func TestHubReplicas(t *testing.T) {
	db := testbed.Postgres(t)
	addrA, addrB := testbed.FreeAddr(t), testbed.FreeAddr(t)
	a, err := startReplica(t, db, "", "hub-a", addrA, addrB)
	if err != nil {
		t.Fatalf("start hub-a: %v", err)
	}
	if code, body := healthz(t, a); code != http.StatusServiceUnavailable || !strings.Contains(body, "not joined to the other replicas") {
		t.Fatalf("hub-a alone: /healthz %d %q, want 503 saying it is not joined", code, body)
	}
	// Alone, it still serves: the others may be down.
	if code, body := probe(t, a, "/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("hub-a alone: /readyz %d %q, want 200 ready", code, body)
	}

	b, err := startReplica(t, db, "", "hub-b", addrB, addrA)
	if err != nil {
		t.Fatalf("start hub-b: %v", err)
	}
	want := []string{"hub-a", "hub-b"}
	testbed.Eventually(t, "both hubs see both", time.Minute, func() (bool, string) {
		ma, mb := a.Members(), b.Members()
		return slices.Equal(ma, want) && slices.Equal(mb, want), "hub-a sees " + strings.Join(ma, ",") + "; hub-b sees " + strings.Join(mb, ",")
	})
	for _, h := range []*server.Hub{a, b} {
		if code, body := healthz(t, h); code != http.StatusOK {
			t.Errorf("/healthz of a joined hub: %d %q", code, body)
		}
	}

	_, err = startReplica(t, db, "", "hub-a", testbed.FreeAddr(t), addrB)
	if err == nil || !strings.Contains(err.Error(), `replica name "hub-a" is held by another hub process`) {
		t.Fatalf("second hub-a: err = %v, want the name refused", err)
	}
	if got := a.Members(); !slices.Equal(got, want) {
		t.Fatalf("hub-a after the refused duplicate sees %v", got)
	}
}

// A hub started again on its data directory while its name still looks
// held (it was killed, so nothing freed it) is the same replica: it starts
// at once, as drover-hub killed and restarted by its supervisor must.
func TestHubRestartedOnItsDataDir(t *testing.T) {
	db := testbed.Postgres(t)
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := startReplica(t, db, dir, "hub-a", ""); err != nil {
		t.Fatalf("start: %v", err)
	}
	again, err := startReplica(t, db, dir, "hub-a", "")
	if err != nil {
		t.Fatalf("start again on the same data directory: %v", err)
	}
	rs, err := again.Store().ListReplicas(context.Background())
	if err != nil || len(rs) != 1 || rs[0].Name != "hub-a" || rs[0].Stopped {
		t.Fatalf("replicas %+v (%v), want hub-a running", rs, err)
	}
}
