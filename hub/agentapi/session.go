package agentapi

import (
	"context"
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
	cancel  context.CancelCauseFunc
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
