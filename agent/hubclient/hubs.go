package hubclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/drover-dev/drover/internal/backoff"
)

// ParseAddrs splits a comma-separated list of hub agent endpoints
// (HOST:PORT each, as --hub takes it) and checks every one. Each is a hub
// replica; a HOST that is a DNS name may stand for several.
func ParseAddrs(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("no address: want HOST:PORT of the hub's agent endpoint, or several separated by commas")
	}
	var addrs []string
	seen := map[string]bool{}
	for i, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("address %d is empty: separate HOST:PORT addresses by single commas", i+1)
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("address %q: want HOST:PORT, such as hub.example.com:8443 or [::1]:8443", a)
		}
		if host == "" {
			return nil, fmt.Errorf("address %q: the host is missing: want HOST:PORT", a)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("address %q: port %q is not a number from 1 to 65535", a, port)
		}
		if seen[a] {
			return nil, fmt.Errorf("address %q is given twice", a)
		}
		seen[a] = true
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// target is one hub replica to dial: its address and the name its serving
// certificate must carry.
type target struct{ addr, serverName string }

// lookupTimeout bounds one DNS lookup of a hub name.
const lookupTimeout = 10 * time.Second

// hubs hands out the hub's replicas one attempt at a time, in turn, and
// decides when the agent waits: once every replica was tried since the
// last wait (a round), or as long as a hub asked. A fleet starts its turns
// at random replicas, so it spreads over them.
//
// A name among the addresses is looked up at the start of every round and
// each address it resolves to is a replica of its own, checked against the
// name: a headless Service or a round-robin record lists every replica, and
// the agent itself, not gRPC's resolver, must choose among them to move to
// another replica when one ends its session or sheds it.
//
// Not safe for concurrent use; one connection loop owns it.
type hubs struct {
	addrs []string
	// serverName overrides the name checked in every replica's
	// certificate; empty means the host the address was given with.
	serverName string
	lookup     func(ctx context.Context, host string) ([]string, error)
	log        *slog.Logger

	targets []target
	next    int
	last    target
	// tried counts the attempts since the last wait.
	tried int
	// left is when a session that held with each replica (by address)
	// last ended.
	left map[string]time.Time
}

func newHubs(addrs []string, serverName string, logger *slog.Logger) *hubs {
	return &hubs{addrs: addrs, serverName: serverName, lookup: net.DefaultResolver.LookupHost, log: logger, next: -1, left: map[string]time.Time{}}
}

// pick returns the replica of the next attempt.
func (h *hubs) pick(ctx context.Context) target {
	if h.tried == 0 || len(h.targets) == 0 {
		h.targets = h.resolve(ctx)
		if h.next < 0 {
			h.next = rand.N(len(h.targets))
		}
		h.next %= len(h.targets)
		// A new list may have moved the replica of the last attempt to
		// the slot due now; the next attempt goes elsewhere if it can.
		if len(h.targets) > 1 && h.targets[h.next] == h.last {
			h.next = (h.next + 1) % len(h.targets)
		}
		if cur := slices.Index(h.targets, h.last); cur >= 0 && !h.left[h.last.addr].IsZero() {
			left := make([]time.Time, len(h.targets))
			for i, t := range h.targets {
				left[i] = h.left[t.addr]
			}
			h.next = Successor(cur, left)
		}
	}
	t := h.targets[h.next]
	h.next = (h.next + 1) % len(h.targets)
	h.tried++
	h.last = t
	return t
}

// newRound forgets the attempts since the last wait: after a session that
// held, every replica deserves a try before the agent waits again. It
// records when the agent left that session's replica.
func (h *hubs) newRound() {
	h.tried = 0
	h.left[h.last.addr] = time.Now()
}

// Successor is the replica an agent moves to when its session with
// replica cur ended after it held: the replica it left longest ago, when
// it was with another before, else the one after cur. left[i] is when it
// last left replica i, zero if never.
//
// A rolling restart restarts each replica once, one after the other, each
// serving again before the next stops; the replica an agent left longest
// ago has restarted already and will not stop again. So in any order an
// agent moves at most twice: away from its replica when that one stops,
// and, if the one it moved to stops later, back to one already restarted.
// Moving on in turn instead follows the restarts round: three moves when
// they go in the agents' own order.
func Successor(cur int, left []time.Time) int {
	best := -1
	for i, at := range left {
		if i == cur || at.IsZero() {
			continue
		}
		if best < 0 || at.Before(left[best]) {
			best = i
		}
	}
	if best < 0 {
		return (cur + 1) % len(left)
	}
	return best
}

// pause waits before the next attempt when the one that ended with err
// calls for it: a hub's retry hint is always honoured; otherwise the agent
// waits, with b's backoff, only once every replica failed since the last
// wait, so one down replica costs no delay and all down cost one per round.
func (h *hubs) pause(ctx context.Context, b *backoff.Backoff, err error) {
	hint := retryHint(err)
	if hint == 0 && h.tried < len(h.targets) {
		return
	}
	h.tried = 0
	b.WaitHint(ctx, err, hint)
}

// resolve lists the replicas: every configured address, a name replaced by
// the addresses it resolves to. A name that does not resolve stays as it
// is, so its dial reports why.
func (h *hubs) resolve(ctx context.Context) []target {
	var out []target
	seen := map[target]bool{}
	add := func(t target) {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	for _, a := range h.addrs {
		host, port, _ := net.SplitHostPort(a) // checked by ParseAddrs
		name := h.serverName
		if name == "" {
			name = host
		}
		if net.ParseIP(host) != nil {
			add(target{addr: a, serverName: name})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		ips, err := h.lookup(lctx, host)
		cancel()
		if err != nil || len(ips) == 0 {
			if ctx.Err() == nil {
				h.log.Warn("look up the hub's address", "hub", a, "err", err)
			}
			add(target{addr: a, serverName: name})
			continue
		}
		for _, ip := range ips {
			add(target{addr: net.JoinHostPort(ip, port), serverName: name})
		}
	}
	return out
}
