package agentapi

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// sessions tracks the live Connect stream of each cluster on this replica,
// so that a second stream replaces the first and a revoked cluster can be
// cut off.
type sessions struct {
	mu        sync.Mutex // guards the fields below
	byCluster map[string]*session
}

// session is one cluster's live stream.
type session struct {
	cluster string
	// since is when the stream arrived; the longest held are shed first.
	since  time.Time
	cancel context.CancelCauseFunc
	// commands is the hand-off from the admin side to the stream's sender;
	// it is buffered and never blocks the caller (see Server.SendCommand).
	commands chan commandMsg
}

func newSessions() *sessions { return &sessions{byCluster: make(map[string]*session)} }

// add registers s as its cluster's session and returns the one it replaces,
// if any. The caller cancels the replaced one.
func (ss *sessions) add(s *session) (replaced *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	replaced = ss.byCluster[s.cluster]
	ss.byCluster[s.cluster] = s
	return replaced
}

// remove forgets s unless a newer session already replaced it.
func (ss *sessions) remove(s *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.byCluster[s.cluster] == s {
		delete(ss.byCluster, s.cluster)
	}
}

func (ss *sessions) get(cluster string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.byCluster[cluster]
}

// clusters lists the clusters whose streams are held.
func (ss *sessions) clusters() []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return slices.Collect(maps.Keys(ss.byCluster))
}

// ending takes up to n sessions to end, the longest held first, and
// forgets them, so that a second call does not count them again while
// they end. The caller cancels them.
func (ss *sessions) ending(n int) []*session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	all := make([]*session, 0, len(ss.byCluster))
	for _, s := range ss.byCluster {
		all = append(all, s)
	}
	slices.SortFunc(all, func(a, b *session) int { return a.since.Compare(b.since) })
	all = all[:min(n, len(all))]
	for _, s := range all {
		delete(ss.byCluster, s.cluster)
	}
	return all
}

func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byCluster)
}

// lastSeen collects heartbeats between flushes, so that thousands of agents
// heartbeating cost one UPDATE per flush rather than one per heartbeat.
type lastSeen struct {
	mu    sync.Mutex // guards the fields below
	names map[string]struct{}
	at    time.Time
}

func newLastSeen() *lastSeen { return &lastSeen{names: make(map[string]struct{})} }

func (l *lastSeen) touch(names ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range names {
		l.names[n] = struct{}{}
	}
	l.at = time.Now()
}

// drain returns the clusters seen since the last drain and the newest time.
func (l *lastSeen) drain() ([]string, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.names))
	for n := range l.names {
		names = append(names, n)
	}
	clear(l.names)
	return names, l.at
}

// answer is an agent's ACK or NACK of an assignment version, as received.
type answer struct {
	version, nackErr string
	at               time.Time
}

// unrecorded keeps the answers the store could not take (PostgreSQL away),
// the latest per cluster, until a flush records them: an agent never
// answers the same version twice, so an answer dropped here would be lost
// for good and the hub would wait on the cluster forever. Bounded by the
// number of clusters. While a cluster has an answer held or being flushed,
// its newer answers queue behind it, so an older answer is never written
// over a newer one.
type unrecorded struct {
	mu       sync.Mutex // guards the fields below
	answers  map[string]answer
	flushing map[string]bool
}

func newUnrecorded() *unrecorded {
	return &unrecorded{answers: make(map[string]answer), flushing: make(map[string]bool)}
}

// queue holds a for the next flush if the cluster has an answer held or
// being flushed, and reports whether it did; otherwise the caller records
// a itself.
func (u *unrecorded) queue(cluster string, a answer) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, held := u.answers[cluster]; !held && !u.flushing[cluster] {
		return false
	}
	u.answers[cluster] = a
	return true
}

// keep holds a, which the store refused, unless a newer answer is held.
func (u *unrecorded) keep(cluster string, a answer) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.answers[cluster]; !ok || !cur.at.After(a.at) {
		u.answers[cluster] = a
	}
}

// take returns the held answers for a flush; done must follow.
func (u *unrecorded) take() map[string]answer {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.answers
	u.answers = make(map[string]answer)
	for name := range out {
		u.flushing[name] = true
	}
	return out
}

// done ends the flush of taken.
func (u *unrecorded) done(taken map[string]answer) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for name := range taken {
		delete(u.flushing, name)
	}
}
