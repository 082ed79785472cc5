package server

import (
	"context"
	"math/rand/v2"
	"time"
)

// Rebalancing agents between replicas. Agents connect to the first replica
// of their --hub list that answers, so a replica that joins (or comes back)
// starts with none. Every rebalanceInterval each replica compares its
// stream count with the fleet's mean, as the replicas publish them over
// gossip, and one holding clearly more than its share asks a few of its
// agents to reconnect elsewhere, each after a random pause: load moves in
// small steps and a replica never sheds below its share, so there is no
// storm and no ping-pong.
const (
	rebalanceInterval = 5 * time.Second
	// rebalanceSlack is how far above its share a replica may stay: a
	// fraction of the share, and at least a few streams.
	rebalanceSlack    = 0.1
	rebalanceMinSlack = 3
	// rebalanceStep bounds the streams shed per interval, as a fraction of
	// those held (at least one).
	rebalanceStep = 0.02
	// rebalanceHintMax spreads the reconnects of shed agents.
	rebalanceHintMax = 10 * time.Second
)

// toShed is how many streams replica self should shed now, given every
// live replica's stream count (self's included).
func toShed(self string, loads map[string]int) int {
	mine, ok := loads[self]
	if !ok || len(loads) < 2 {
		return 0
	}
	total := 0
	for _, n := range loads {
		total += n
	}
	share := float64(total) / float64(len(loads))
	slack := max(share*rebalanceSlack, rebalanceMinSlack)
	if float64(mine) <= share+slack {
		return 0
	}
	excess := float64(mine) - share
	step := max(float64(mine)*rebalanceStep, 1)
	return int(min(excess, step))
}

// rebalance sheds streams while this replica holds more than its share of
// them, as loads (every live replica's stream count, published over
// gossip) says, until ctx ends. It returns nothing: a replica that cannot
// rebalance still serves.
func (h *Hub) rebalance(ctx context.Context) {
	t := time.NewTicker(rebalanceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		loads := h.members.Loads()
		n := toShed(h.cfg.Replica, loads)
		if n == 0 {
			continue
		}
		hint := time.Second + rand.N(rebalanceHintMax-time.Second)
		shed := h.Shed(n, hint)
		h.log.Info("agents asked to reconnect to another replica", "agents", shed, "loads", loads, "retry_after", hint.Round(time.Millisecond))
	}
}
