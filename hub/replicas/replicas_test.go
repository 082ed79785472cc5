package replicas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// waitLong bounds how long a broken test takes to say so; nothing here
// asserts how fast membership converges.
const waitLong = 60 * time.Second

func newStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), testbed.Postgres(t), testlog.New(t))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// testConfig is a replica gossiping on a free loopback port, heartbeating
// often so that a killed one's name goes stale soon.
func testConfig(t *testing.T, s *store.Store, name string, peers ...string) Config {
	return Config{
		Name: name, AgentAddr: "127.0.0.1:8443", HTTPAddr: "127.0.0.1:8080", Version: "test",
		NodeID:   "node-" + name,
		PeerAddr: "127.0.0.1:0", Peers: peers,
		GossipKey: bytes.Repeat([]byte{1}, 32),
		Store:     s, Logger: testlog.New(t).With("test_replica", name),
		HeartbeatInterval: 200 * time.Millisecond, StaleAfter: 2 * time.Second,
	}
}

func start(t *testing.T, cfg Config) *Membership {
	t.Helper()
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitMembers waits until every one of ms sees exactly want.
func waitMembers(t *testing.T, want []string, ms ...*Membership) {
	t.Helper()
	testbed.Eventually(t, fmt.Sprintf("members %v", want), waitLong, func() (bool, string) {
		for _, m := range ms {
			if got := m.Members(); !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s sees %v", m.Name(), got)
			}
		}
		return true, ""
	})
}

// startFails starts a replica that must not start, and returns why not.
func startFails(t *testing.T, cfg Config) error {
	t.Helper()
	m, err := Start(context.Background(), cfg)
	if err == nil {
		m.Close()
		t.Fatalf("%s started", cfg.Name)
	}
	t.Logf("Start: %v", err)
	return err
}

func replicaRow(t *testing.T, s *store.Store, name string) store.Replica {
	t.Helper()
	rs, err := s.ListReplicas(context.Background())
	if err != nil {
		t.Fatalf("ListReplicas: %v", err)
	}
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no replica row %q", name)
	return store.Replica{}
}

// Three replicas join and agree; one killed (no leave) is dropped by the
// others; started again under its name on another port, it joins again.
func TestJoinKillRejoin(t *testing.T) {
	whole := t
	s := newStore(t)
	a := start(t, testConfig(t, s, "hub-a"))
	b := start(t, testConfig(t, s, "hub-b", a.PeerAddr()))
	c := start(t, testConfig(t, s, "hub-c", a.PeerAddr(), b.PeerAddr()))
	waitMembers(t, []string{"hub-a", "hub-b", "hub-c"}, a, b, c)
	select {
	case <-a.Changes():
	default:
		t.Error("no change signalled to hub-a after two replicas joined it")
	}

	t.Run("load is published", func(t *testing.T) {
		b.SetLoad(7)
		testbed.Eventually(t, "hub-b's load seen by the others", waitLong, func() (bool, string) {
			la, lc := a.Loads(), c.Loads()
			return la["hub-b"] == 7 && lc["hub-b"] == 7, fmt.Sprintf("hub-a sees %v, hub-c sees %v", la, lc)
		})
		if l := b.Loads()["hub-b"]; l != 7 {
			t.Errorf("hub-b's own load %d, want 7", l)
		}
	})

	t.Run("a killed replica is dropped", func(t *testing.T) {
		b.kill()
		waitMembers(t, []string{"hub-a", "hub-c"}, a, c)
		if replicaRow(t, s, "hub-b").Stopped {
			t.Fatal("a killed replica's row says stopped")
		}
	})

	t.Run("it starts again and joins", func(t *testing.T) {
		// On another machine (another node id): it may start once its
		// old row's heartbeat is stale.
		cfg := testConfig(t, s, "hub-b", a.PeerAddr())
		cfg.NodeID = "another-node"
		var b2 *Membership
		testbed.Eventually(t, "hub-b started again", waitLong, func() (bool, string) {
			m, err := Start(context.Background(), cfg)
			if errors.Is(err, store.ErrReplicaNameTaken) {
				return false, err.Error()
			}
			if err != nil {
				t.Fatalf("start hub-b again: %v", err)
			}
			b2 = m
			return true, ""
		})
		whole.Cleanup(func() { b2.Close() }) // it runs on in later subtests
		waitMembers(t, []string{"hub-a", "hub-b", "hub-c"}, a, b2, c)
		if r := replicaRow(t, s, "hub-b"); r.Instance != b2.Instance() || r.Stopped {
			t.Fatalf("hub-b's row %+v, want instance %s running", r, b2.Instance())
		}
	})

	t.Run("a closed replica leaves and frees its name", func(t *testing.T) {
		c.Close()
		waitMembers(t, []string{"hub-a", "hub-b"}, a)
		if !replicaRow(t, s, "hub-c").Stopped {
			t.Fatal("a closed replica's row is not stopped")
		}
	})
}

// A replica started before its peers joins them when they come up.
func TestJoinPeersLater(t *testing.T) {
	s := newStore(t)
	laterAddr := testbed.FreeAddr(t)
	early := start(t, testConfig(t, s, "hub-early", laterAddr))
	if got := early.Members(); !slices.Equal(got, []string{"hub-early"}) {
		t.Fatalf("members before any peer is up: %v", got)
	}
	cfg := testConfig(t, s, "hub-later")
	cfg.PeerAddr = laterAddr
	later := start(t, cfg)
	waitMembers(t, []string{"hub-early", "hub-later"}, early, later)
}

// A replica whose gossip key differs from its peers' fails to start,
// saying so, and frees its name; the others never count it.
func TestWrongGossipKey(t *testing.T) {
	s := newStore(t)
	keyed := start(t, testConfig(t, s, "hub-a"))
	keyed2 := start(t, testConfig(t, s, "hub-b", keyed.PeerAddr()))
	waitMembers(t, []string{"hub-a", "hub-b"}, keyed, keyed2)
	clearCfg := testConfig(t, s, "hub-clear")
	clearCfg.GossipKey = nil
	clear := start(t, clearCfg)

	for _, tc := range []struct {
		name string
		key  []byte
		peer *Membership
	}{
		{"different keys", bytes.Repeat([]byte{2}, 32), keyed},
		{"different key sizes", bytes.Repeat([]byte{1}, 16), keyed},
		{"no key here", nil, keyed},
		{"no key there", bytes.Repeat([]byte{1}, 32), clear},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, s, "hub-x", tc.peer.PeerAddr())
			cfg.GossipKey = tc.key
			err := startFails(t, cfg)
			if !errors.Is(err, ErrGossipKeyMismatch) || !strings.Contains(err.Error(), "give every replica the same gossip key") {
				t.Fatalf("err = %v, want ErrGossipKeyMismatch saying how to fix it", err)
			}
			if !replicaRow(t, s, "hub-x").Stopped {
				t.Error("the refused replica's name is still held")
			}
		})
	}
	// Never merged: had the others counted the refused replica, failure
	// detection would still be seconds from dropping it now.
	for _, m := range []*Membership{keyed, keyed2, clear} {
		if slices.Contains(m.Members(), "hub-x") {
			t.Errorf("%s counts the refused replica: %v", m.Name(), m.Members())
		}
	}
	waitMembers(t, []string{"hub-a", "hub-b"}, keyed, keyed2)
}

// A second process under a live replica's name is refused, naming the
// first, and the first carries on.
func TestDuplicateName(t *testing.T) {
	s := newStore(t)
	first := start(t, testConfig(t, s, "hub-a"))
	other := start(t, testConfig(t, s, "hub-b", first.PeerAddr()))
	waitMembers(t, []string{"hub-a", "hub-b"}, first, other)

	cfg := testConfig(t, s, "hub-a", other.PeerAddr())
	cfg.NodeID = "another-node"
	cfg.AgentAddr = "127.0.0.2:8443"
	err := startFails(t, cfg)
	var taken *store.ReplicaNameTakenError
	if !errors.As(err, &taken) || taken.Holder.Instance != first.Instance() || !strings.Contains(err.Error(), "--replica") {
		t.Fatalf("err = %v, want the name taken by %s, saying to set --replica", err, first.Instance())
	}

	// The first keeps its name through further heartbeats, and its place.
	before := replicaRow(t, s, "hub-a")
	testbed.Eventually(t, "a heartbeat of the first hub-a", waitLong, func() (bool, string) {
		r := replicaRow(t, s, "hub-a")
		return r.HeartbeatAt.After(before.HeartbeatAt), fmt.Sprintf("row %+v", r)
	})
	if r := replicaRow(t, s, "hub-a"); r.Instance != first.Instance() || r.Stopped || r.AgentAddr != "127.0.0.1:8443" || r.PeerAddr != first.PeerAddr() {
		t.Fatalf("hub-a's row %+v, want the first's", r)
	}
	if first.Err() != nil {
		t.Fatalf("the first hub-a lost its name: %v", first.Err())
	}
	waitMembers(t, []string{"hub-a", "hub-b"}, first, other)
}

// A process whose name was claimed while its heartbeats did not arrive
// learns it lost the name.
func TestLostName(t *testing.T) {
	s := newStore(t)
	cfg := testConfig(t, s, "hub-a")
	cfg.PeerAddr = ""
	m := start(t, cfg)
	if got := m.Members(); !slices.Equal(got, []string{"hub-a"}) {
		t.Fatalf("members without gossip: %v", got)
	}
	// Another process claims the name as a stale one: by the same node
	// id, as a restart after a crash would.
	if err := s.ClaimReplica(context.Background(), store.Replica{Name: "hub-a", Instance: "usurper", NodeID: cfg.NodeID}, time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Lost():
	case <-time.After(waitLong):
		t.Fatal("the replica did not notice it lost its name")
	}
	if err := m.Err(); !errors.Is(err, store.ErrReplicaNameTaken) {
		t.Fatalf("Err = %v, want ErrReplicaNameTaken", err)
	}
	m.Close()
	if r := replicaRow(t, s, "hub-a"); r.Instance != "usurper" || r.Stopped {
		t.Fatalf("closing the process that lost its name changed the new holder's row: %+v", r)
	}
}

func TestConfigErrors(t *testing.T) {
	s := newStore(t)
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"short key", func(c *Config) { c.GossipKey = []byte("short") }, "5 bytes, want 16, 24 or 32"},
		{"peer address without port", func(c *Config) { c.PeerAddr = "127.0.0.1" }, "want HOST:PORT"},
		{"peer without port", func(c *Config) { c.Peers = []string{"hub-0.hub"} }, `peer "hub-0.hub"`},
		{"peers without gossip", func(c *Config) { c.PeerAddr = ""; c.Peers = []string{"127.0.0.1:7946"} }, "--peer-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, s, "hub-bad")
			tc.mutate(&cfg)
			if err := startFails(t, cfg); !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
	if rs, err := s.ListReplicas(context.Background()); err != nil || len(rs) != 0 {
		t.Fatalf("replicas after refused configurations: %v, %v", rs, err)
	}
}
