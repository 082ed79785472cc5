package agentapi

import (
	"slices"
	"testing"
	"time"
)

// Answers the store refused are held, the latest per cluster, and an
// answer arriving while one is held or being flushed queues behind it, so
// the flush never writes an older answer over a newer one.
func TestUnrecordedAnswersKeepTheirOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	u := newUnrecorded()

	if u.queue("a", answer{version: "v1", at: at(1)}) {
		t.Fatal("nothing held: the caller should record v1 itself")
	}
	u.keep("a", answer{version: "v1", at: at(1)}) // the store refused it
	if !u.queue("a", answer{version: "v2", at: at(2)}) {
		t.Fatal("v1 is held: v2 must queue behind it")
	}
	u.keep("a", answer{version: "v1", at: at(1)}) // a late refusal of v1
	taken := u.take()
	if got := taken["a"].version; got != "v2" || len(taken) != 1 {
		t.Fatalf("flush takes %v, want only a's v2", taken)
	}
	// During the flush, a's next answer queues; b, with nothing held,
	// is recorded directly.
	if !u.queue("a", answer{version: "v3", at: at(3)}) {
		t.Fatal("a is being flushed: v3 must queue")
	}
	if u.queue("b", answer{version: "w1", at: at(3)}) {
		t.Fatal("b has nothing held")
	}
	// The flush fails for v2: it must not displace the newer v3.
	u.keep("a", taken["a"])
	u.done(taken)
	if got := u.take()["a"].version; got != "v3" {
		t.Fatalf("after the failed flush a holds %q, want v3", got)
	}
}

// Shedding takes the longest held streams first, so the agents that just
// moved here are the last to move again, and a stream taken once is not
// counted by the next call while it ends.
func TestSessionsEndingLongestHeldFirst(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ss := newSessions()
	for i, name := range []string{"c", "a", "d", "b"} {
		ss.add(&session{cluster: name, since: t0.Add(time.Duration([]int{3, 1, 4, 2}[i]) * time.Second)})
	}
	names := func(l []*session) []string {
		var out []string
		for _, s := range l {
			out = append(out, s.cluster)
		}
		return out
	}
	if got := names(ss.ending(2)); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("first shed of 2 took %v; want the longest held, [a b]", got)
	}
	if got := names(ss.ending(5)); !slices.Equal(got, []string{"c", "d"}) {
		t.Errorf("second shed took %v; want the rest, [c d]", got)
	}
	if n := ss.count(); n != 0 {
		t.Errorf("%d sessions left; want none", n)
	}
}
