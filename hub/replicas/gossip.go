package replicas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/drover-dev/drover/internal/backoff"
)

// gossipLabel is sent with every gossip packet and stream: a process of
// another memberlist cluster (Consul, Serf, another product) on a Peers
// address is ignored rather than merged.
const gossipLabel = "drover-hub"

// createGossip starts memberlist on PeerAddr.
func (m *Membership) createGossip(ctx context.Context) (*memberlist.Memberlist, error) {
	host, portText, _ := net.SplitHostPort(m.cfg.PeerAddr) // validated
	port, _ := strconv.Atoi(portText)
	bindIP, err := resolveBindIP(ctx, host)
	if err != nil {
		return nil, err
	}

	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Name
	c.BindAddr = bindIP.String()
	c.BindPort = port
	c.AdvertisePort = port
	if !bindIP.IsUnspecified() {
		c.AdvertiseAddr = bindIP.String()
	}
	c.Label = gossipLabel
	c.SecretKey = m.cfg.GossipKey
	c.Delegate = delegate{m}
	c.Events = events{m}
	c.Logger = log.New(logWriter{m.log}, "", 0)

	// Failure detection within about 5 s on a LAN. Every member probes
	// one other per ProbeInterval, round robin, so a dead replica is
	// probed within about 0.5 s; the direct probe waits ProbeTimeout
	// (250 ms), indirect probes through other members take the rest of
	// the interval, and then it is suspect. It is declared dead after the
	// suspicion timeout: SuspicionMult × max(1, log10(members)) ×
	// ProbeInterval = 4 × 1 × 0.5 s = 2 s for up to 10 replicas, which
	// starts at SuspicionMaxTimeoutMult × that = 4 s when enough members
	// could confirm the suspicion (5 or more) and shrinks towards 2 s as
	// they do. Suspect after ≤ 1 s + dead after 2-4 s ≈ 3-5 s. The
	// defaults (1 s, 500 ms, ×4, ×6) take 5-25 s.
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.SuspicionMult = 4
	c.SuspicionMaxTimeoutMult = 2
	// Push/pull is the anti-entropy between full states; halved from
	// 30 s, a few hub replicas make it cheap.
	c.PushPullInterval = 15 * time.Second
	// A join to a peer that is not listening fails at once; one whose
	// address drops packets must not hold Start for long.
	c.TCPTimeout = 5 * time.Second
	// A replica restarted elsewhere (a new pod IP) takes its name back
	// from its dead self at once: PostgreSQL already vouched that no
	// other live process holds the name.
	c.DeadNodeReclaimTime = time.Nanosecond

	if len(m.cfg.GossipKey) == 0 {
		m.log.Warn("gossip between replicas is not encrypted: give every replica the same --gossip-key-file or DROVER_GOSSIP_KEY")
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("start gossip on --peer-addr %s: %w", m.cfg.PeerAddr, err)
	}
	return ml, nil
}

// resolveBindIP turns PeerAddr's host into an address to bind.
func resolveBindIP(ctx context.Context, host string) (net.IP, error) {
	if host == "" {
		return net.IPv4zero, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip, nil
	}
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve --peer-addr host %q: %w", host, err)
	}
	return ips[0], nil
}

// firstJoin joins the peers once, at start. Peers that are up but cannot
// read our gossip fail Start; peers that are not up yet are left to
// keepJoined.
func (m *Membership) firstJoin(ctx context.Context) error {
	joined, err := m.join(ctx)
	switch {
	case errors.Is(err, ErrGossipKeyMismatch):
		return err
	case joined > 0:
		return nil
	default:
		m.log.Info("no other replica reachable yet; joining in the background", "peers", strings.Join(m.cfg.Peers, ","), "err", err)
		return nil
	}
}

// keepJoined joins the peers again whenever this replica is alone: the
// peers it started before, and the others after a partition long enough
// for both sides to forget each other.
func (m *Membership) keepJoined(ctx context.Context) {
	const checkInterval = 5 * time.Second
	b := backoff.New(time.Second, 30*time.Second)
	for {
		var err error
		if m.ml.NumMembers() < 2 {
			var joined int
			joined, err = m.join(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case joined > 0:
				m.log.Info("joined the other replicas", "members", m.Members())
			case errors.Is(err, ErrGossipKeyMismatch):
				m.log.Error("cannot join the other replicas", "err", err)
			default:
				m.log.Debug("no other replica reachable yet", "err", err)
			}
		}
		if err != nil {
			b.Wait(ctx, err)
		} else {
			b.Reset()
			t := time.NewTimer(backoff.Jitter(checkInterval, 0.2))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// join tries every address of every peer but this replica's own. It
// returns how many joins succeeded, and an error for the ones that failed:
// ErrGossipKeyMismatch when any failed for that reason.
func (m *Membership) join(ctx context.Context) (int, error) {
	addrs, errs := m.peerAddrs(ctx)
	joined, mismatch := 0, false
	for _, a := range addrs {
		if _, err := m.ml.Join([]string{a}); err != nil {
			err = unwrapMulti(err)
			if isKeyMismatch(err) {
				mismatch = true
			}
			errs = append(errs, err)
			continue
		}
		joined++
	}
	err := errors.Join(errs...)
	if len(addrs) == 0 && err == nil {
		err = errors.New("the peers name no replica but this one")
	}
	if mismatch {
		err = fmt.Errorf("%w between this replica and a peer: give every replica the same gossip key (--gossip-key-file or DROVER_GOSSIP_KEY, base64 of 16, 24 or 32 bytes), or none to all: %w", ErrGossipKeyMismatch, err)
	}
	return joined, err
}

// unwrapMulti turns memberlist's *multierror.Error, whose text spans
// lines ("1 error occurred:\n\t* ..."), into the one-line errors it holds.
func unwrapMulti(err error) error {
	if me, ok := err.(interface{ WrappedErrors() []error }); ok {
		if errs := me.WrappedErrors(); len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	return err
}

// peerAddrs resolves Peers to IP:PORT addresses, without this replica's.
func (m *Membership) peerAddrs(ctx context.Context) ([]string, []error) {
	var addrs []string
	var errs []error
	for _, p := range m.cfg.Peers {
		host, port, _ := net.SplitHostPort(p) // validated
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve peer %s: %w", p, err))
			continue
		}
		for _, ip := range ips {
			if ip.Equal(m.self.ip) && port == strconv.Itoa(m.self.port) {
				continue
			}
			a := net.JoinHostPort(ip.String(), port)
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, errs
}

// isKeyMismatch reports whether a memberlist join failed because the two
// sides' gossip keys differ. memberlist v0.7.0 has no error types: it
// formats these with %v, so its texts are all there is. Which one the
// joining side sees depends on the keys (the peer answers a message it
// cannot read with an error of its own, encrypted with its own key or
// none):
//   - both have keys, different ones: ours cannot decrypt the answer;
//   - we have a key, the peer none: its answer is in clear text;
//   - we have none, the peer one: its answer is encrypted.
//
// TestWrongGossipKey covers all three, so a memberlist that words them
// differently fails the test rather than a hub in production.
func isKeyMismatch(err error) bool {
	msg := err.Error()
	for _, s := range []string{
		"no installed keys could decrypt the message",
		"encryption is configured but remote state is not encrypted",
		"remote state is encrypted and encryption is not configured",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// meta is what a replica publishes with its gossip (at most
// memberlist.MetaMaxSize bytes).
type meta struct {
	// Load is the number of agent streams the replica holds.
	Load int `json:"load"`
}

func decodeMeta(b []byte) (meta, bool) {
	var mt meta
	if len(b) == 0 || json.Unmarshal(b, &mt) != nil {
		return meta{}, false
	}
	return mt, true
}

// publishLoad gossips the load SetLoad set, at most twice a second.
func (m *Membership) publishLoad(ctx context.Context) {
	const minGap = 500 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.loadChanged:
		}
		// UpdateNode waits until the update went to one member, at most
		// its timeout; alone, it returns at once.
		if err := m.ml.UpdateNode(2 * time.Second); err != nil {
			m.log.Debug("publish load", "err", err)
		}
		t := time.NewTimer(minGap)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// delegate publishes the replica's load as node metadata. memberlist calls
// it from its own goroutines; it only reads an atomic.
type delegate struct{ m *Membership }

func (d delegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(meta{Load: int(d.m.load.Load())})
	if len(b) > limit {
		return nil
	}
	return b
}

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events turns memberlist's membership events into Changes signals and
// records each member's published load. memberlist calls it holding its
// own locks, so it must not block (the signal is a non-blocking send),
// and only here may a Node's Meta be read: memberlist rewrites it in
// place under those locks, so reading it from Members() would race.
type events struct{ m *Membership }

func (e events) NotifyJoin(n *memberlist.Node) {
	e.m.log.Info("replica joined", "member", n.Name, "addr", n.Address())
	e.noteMeta(n)
	e.m.changed()
}

func (e events) NotifyLeave(n *memberlist.Node) {
	e.m.log.Info("replica left or failed", "member", n.Name, "addr", n.Address())
	e.m.setPeerLoad(n.Name, 0, true)
	e.m.changed()
}

func (e events) NotifyUpdate(n *memberlist.Node) {
	e.noteMeta(n)
	e.m.changed()
}

func (e events) noteMeta(n *memberlist.Node) {
	if mt, ok := decodeMeta(n.Meta); ok {
		e.m.setPeerLoad(n.Name, mt.Load, false)
	}
}

// logWriter sends memberlist's log lines ("[WARN] memberlist: ...") to
// slog at their level.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			level, line = l, strings.TrimSpace(rest)
			break
		}
	}
	w.log.Log(context.Background(), level, strings.TrimPrefix(line, "memberlist: "), "component", "memberlist")
	return len(p), nil
}

var (
	_ memberlist.Delegate      = delegate{}
	_ memberlist.EventDelegate = events{}
)
