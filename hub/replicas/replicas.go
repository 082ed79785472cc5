// Package replicas makes several drover-hub processes on one PostgreSQL
// know each other: which replicas are alive now, and how many agent
// streams each holds.
//
// Two parts, each doing what it is good at:
//
//   - PostgreSQL (table hub_replicas, through hub/store) holds the replica
//     *name*. A replica claims its name at start and heartbeats; a second
//     live process under the same name is refused with an error naming the
//     first, because jobs and agent streams are recorded by replica name
//     and two processes behind one name would both act as it. A replica
//     whose heartbeat finds its name taken (it was presumed dead) reports
//     that through Lost, and the hub stops.
//   - hashicorp/memberlist (SWIM gossip over UDP and TCP on --peer-addr)
//     says who is *alive*, within seconds, without a database round trip:
//     Members is the input of rendezvous hashing (hub/ownership), which decides
//     the one replica that should run each background job. Gossip only
//     proposes owners; the job leases in PostgreSQL fence every write, so
//     a gossip split never gives a job two actors.
//
// Without --peer-addr a hub is a single replica: it still claims its name,
// and Members is itself alone.
//
// Replicas find each other through Peers (--peers): addresses of the other
// replicas, or a name that resolves to all of them, such as a Kubernetes
// headless Service. Peers that are not up yet (the first replica of a
// StatefulSet starts alone) are retried in the background; a peer that
// cannot read our gossip because the gossip keys differ is an error at
// once, since retrying cannot help.
package replicas

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/backoff"
)

// Defaults of the Config fields left zero.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	// DefaultStaleAfter is four missed heartbeats: a replica that was
	// killed (no StopReplica) frees its name after this long, unless it
	// comes back with the same NodeID.
	DefaultStaleAfter = 20 * time.Second
)

// Store is what a Membership needs of hub/store.
type Store interface {
	ClaimReplica(ctx context.Context, r store.Replica, staleAfter time.Duration) error
	ReplicaHeartbeat(ctx context.Context, name, instance string) error
	StopReplica(ctx context.Context, name, instance string) error
}

var _ Store = (*store.Store)(nil)

// Config configures Start.
type Config struct {
	// Name is the replica's name (--replica), unique among live replicas.
	Name string
	// AgentAddr, HTTPAddr and Version are recorded for operators.
	AgentAddr, HTTPAddr, Version string
	// NodeID identifies the replica's data directory: a replica started
	// again with the same NodeID after a crash takes over its name at
	// once, rather than after StaleAfter. Empty: no such shortcut.
	NodeID string
	// PeerAddr is where gossip binds and what it advertises, HOST:PORT
	// (both UDP and TCP). Empty: no gossip, a single replica. HOST may be
	// a name (resolved once, at start); an unspecified host (":7946",
	// "0.0.0.0:7946") binds every interface and advertises a private
	// address of the machine. Port 0 picks a free port.
	PeerAddr string
	// Peers are HOST:PORT addresses of the other replicas. A name may
	// resolve to several addresses (a headless Service); this replica's
	// own address is skipped.
	Peers []string
	// GossipKey encrypts and authenticates gossip: 16, 24 or 32 bytes
	// (AES-128, -192, -256), the same on every replica. nil: unencrypted,
	// which is logged as a warning.
	GossipKey []byte
	Store     Store
	Logger    *slog.Logger
	// HeartbeatInterval and StaleAfter: zero means the defaults above.
	HeartbeatInterval, StaleAfter time.Duration
}

// ErrGossipKeyMismatch: a peer could not read this replica's gossip, or
// this replica could not read the peer's, because their gossip keys
// differ (or one has none).
var ErrGossipKeyMismatch = errors.New("gossip keys differ")

// Membership is this process's place among the hub replicas. It is safe for
// concurrent use.
type Membership struct {
	cfg      Config
	log      *slog.Logger
	instance string
	// ml is nil without gossip (no PeerAddr).
	ml *memberlist.Memberlist
	// self is the address this replica gossips on, as bound, read once:
	// memberlist rewrites its own node under its own lock.
	self struct {
		ip   net.IP
		port int
	}

	load        atomic.Int64
	mu          sync.Mutex
	peerLoads   map[string]int // guarded by mu: the others' published loads
	loadChanged chan struct{}  // buffered(1): SetLoad → the publisher
	changes     chan struct{}  // buffered(1): membership changed

	// claimed: the name was this process's (Start got that far).
	claimed bool

	lost     chan struct{} // closed when this process lost its name
	lostOnce sync.Once
	lostErr  error // set before lost is closed

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start claims cfg.Name in PostgreSQL, starts gossip on cfg.PeerAddr and
// joins cfg.Peers. It fails when the name is held by another live process
// (a *store.ReplicaNameTakenError), or when a peer is up but the gossip
// keys differ (ErrGossipKeyMismatch); peers that are not up yet are joined
// in the background. ctx bounds Start only.
func Start(ctx context.Context, cfg Config) (_ *Membership, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	m := &Membership{
		cfg:         cfg,
		log:         cfg.Logger.With("replica", cfg.Name),
		instance:    store.NewInstanceID(),
		loadChanged: make(chan struct{}, 1),
		changes:     make(chan struct{}, 1),
		lost:        make(chan struct{}),
		peerLoads:   map[string]int{},
	}
	defer func() {
		if err != nil {
			m.release()
		}
	}()
	// Gossip binds first, so the row records the address it really
	// advertises; it contacts no peer before the name is ours.
	if cfg.PeerAddr != "" {
		if m.ml, err = m.createGossip(ctx); err != nil {
			return nil, err
		}
		n := m.ml.LocalNode()
		m.self.ip, m.self.port = slices.Clone(n.Addr), int(n.Port)
	}
	if err := m.claim(ctx); err != nil {
		return nil, err
	}
	m.claimed = true
	if m.ml != nil && len(cfg.Peers) > 0 {
		if err := m.firstJoin(ctx); err != nil {
			return nil, err
		}
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	m.goRun(func() { m.heartbeat(runCtx) })
	if m.ml != nil {
		m.goRun(func() { m.publishLoad(runCtx) })
		if len(cfg.Peers) > 0 {
			m.goRun(func() { m.keepJoined(runCtx) })
		}
	}
	m.log.Info("replica started", "instance", m.instance, "peer_addr", m.PeerAddr(), "members", m.Members())
	return m, nil
}

// claim records this process as the holder of its replica name.
func (m *Membership) claim(ctx context.Context) error {
	cfg := m.cfg
	err := cfg.Store.ClaimReplica(ctx, store.Replica{
		Name: cfg.Name, Instance: m.instance, NodeID: cfg.NodeID,
		AgentAddr: cfg.AgentAddr, HTTPAddr: cfg.HTTPAddr, PeerAddr: m.PeerAddr(), Version: cfg.Version,
	}, cfg.StaleAfter)
	if errors.Is(err, store.ErrReplicaNameTaken) {
		return fmt.Errorf("%w\nEvery replica needs its own --replica name (DROVER_REPLICA). If that process is gone, start this one again once its last heartbeat is more than %v old", err, cfg.StaleAfter)
	}
	if err != nil {
		return fmt.Errorf("claim replica name %q: %w", cfg.Name, err)
	}
	return nil
}

func (m *Membership) goRun(fn func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn()
	}()
}

func (c *Config) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("replica name: required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("store: required"))
	}
	if err := CheckGossipKey(c.GossipKey); err != nil {
		errs = append(errs, err)
	}
	if c.PeerAddr != "" {
		if err := CheckPeerAddr(c.PeerAddr); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range c.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			errs = append(errs, fmt.Errorf("peer %q: want HOST:PORT (%v)", p, err))
		}
	}
	if len(c.Peers) > 0 && c.PeerAddr == "" {
		errs = append(errs, errors.New("peers need a gossip address of this replica too (--peer-addr)"))
	}
	return errors.Join(errs...)
}

// CheckGossipKey says whether key can encrypt gossip: nil, or 16, 24 or 32
// bytes.
func CheckGossipKey(key []byte) error {
	switch len(key) {
	case 0, 16, 24, 32:
		return nil
	}
	return fmt.Errorf("gossip key: %d bytes, want 16, 24 or 32 (AES-128, -192 or -256), e.g. `head -c 32 /dev/urandom | base64`", len(key))
}

// CheckPeerAddr says whether addr can be a gossip address: HOST:PORT with
// a port from 0 to 65535.
func CheckPeerAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("gossip address %q: want HOST:PORT such as 10.0.0.5:7946 (%v)", addr, err)
	}
	if _, err := net.LookupPort("udp", port); err != nil {
		return fmt.Errorf("gossip address %q: bad port (%v)", addr, err)
	}
	return nil
}

// Name is this replica's name.
func (m *Membership) Name() string { return m.cfg.Name }

// Instance is this process's random id, as recorded with its name.
func (m *Membership) Instance() string { return m.instance }

// PeerAddr is the gossip address this replica advertises, or "" without
// gossip.
func (m *Membership) PeerAddr() string {
	if m.ml == nil {
		return ""
	}
	return net.JoinHostPort(m.self.ip.String(), strconv.Itoa(m.self.port))
}

// Members returns the names of the live replicas, sorted, this one
// included. Replicas under suspicion count as live until declared dead.
func (m *Membership) Members() []string {
	if m.ml == nil {
		return []string{m.cfg.Name}
	}
	nodes := m.ml.Members()
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names
}

// Changes signals that Members or Loads may have changed: a replica
// joined, left, died or published a new load. Signals coalesce: after one,
// read Members and Loads again.
func (m *Membership) Changes() <-chan struct{} { return m.changes }

func (m *Membership) changed() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// SetLoad publishes this replica's load, the number of agent streams it
// holds, to the others. Cheap: updates coalesce before they are gossiped.
func (m *Membership) SetLoad(n int) {
	if m.load.Swap(int64(n)) == int64(n) {
		return
	}
	select {
	case m.loadChanged <- struct{}{}:
	default:
	}
}

// Loads returns the last load each live replica published, by name.
func (m *Membership) Loads() map[string]int {
	loads := map[string]int{m.cfg.Name: int(m.load.Load())}
	if m.ml == nil {
		return loads
	}
	members := m.Members()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, name := range members {
		if l, ok := m.peerLoads[name]; ok && name != m.cfg.Name {
			loads[name] = l
		}
	}
	return loads
}

// setPeerLoad records the load a member published in its metadata, or
// forgets it when gone.
func (m *Membership) setPeerLoad(name string, l int, gone bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gone {
		delete(m.peerLoads, name)
	} else {
		m.peerLoads[name] = l
	}
}

// Lost is closed when this process lost its replica name: another process
// claimed it after this one's heartbeats stopped reaching PostgreSQL. The
// hub must stop; Err says why.
func (m *Membership) Lost() <-chan struct{} { return m.lost }

// Err is why Lost was closed, or nil.
func (m *Membership) Err() error {
	select {
	case <-m.lost:
		return m.lostErr
	default:
		return nil
	}
}

// heartbeat records every HeartbeatInterval (jittered) that this process
// still holds its name, until ctx ends or the name is lost.
func (m *Membership) heartbeat(ctx context.Context) {
	for {
		t := time.NewTimer(backoff.Jitter(m.cfg.HeartbeatInterval, 0.1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := m.cfg.Store.ReplicaHeartbeat(ctx, m.cfg.Name, m.instance)
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, store.ErrReplicaNameTaken):
			m.lostOnce.Do(func() {
				m.lostErr = fmt.Errorf("replica %q lost its name: its heartbeats did not reach the database for over %v and another process claimed it: %w", m.cfg.Name, m.cfg.StaleAfter, err)
				m.log.Error("replica name lost", "err", m.lostErr)
				close(m.lost)
			})
			return
		default:
			// The database is down or slow: keep trying; the name stays
			// this process's until another claims it.
			m.log.Warn("replica heartbeat failed", "err", err)
		}
	}
}

// Close leaves the gossip (the others drop this replica at once rather
// than after failure detection), stops it and frees the name. Safe to call
// more than once.
func (m *Membership) Close() error {
	m.closeOnce.Do(func() {
		if m.cancel != nil {
			m.cancel()
		}
		m.wg.Wait()
		if m.ml != nil {
			if err := m.ml.Leave(2 * time.Second); err != nil {
				m.log.Warn("leave the replicas' gossip", "err", err)
			}
		}
		m.release()
	})
	return nil
}

// release stops gossip and frees the name, unless it was lost or never
// claimed.
func (m *Membership) release() {
	if m.ml != nil {
		if err := m.ml.Shutdown(); err != nil {
			m.log.Warn("stop gossip", "err", err)
		}
	}
	if !m.claimed || m.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.cfg.Store.StopReplica(ctx, m.cfg.Name, m.instance); err != nil {
		m.log.Warn("free the replica name", "err", err)
	}
}

// kill ends the membership as a crash does: no leave message, the name not
// freed. For tests.
func (m *Membership) kill() {
	m.closeOnce.Do(func() {
		m.cancel()
		m.wg.Wait()
		if m.ml != nil {
			_ = m.ml.Shutdown()
		}
	})
}
