package hubclient

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/drover-dev/drover/internal/backoff"
	"github.com/drover-dev/drover/internal/testlog"
)

func TestParseAddrs(t *testing.T) {
	for _, tt := range []struct {
		list string
		want []string
	}{
		{"hub:8443", []string{"hub:8443"}},
		{"10.0.0.1:8443,10.0.0.2:8443", []string{"10.0.0.1:8443", "10.0.0.2:8443"}},
		{" a.example:1 , [::1]:65535 ", []string{"a.example:1", "[::1]:65535"}},
	} {
		got, err := ParseAddrs(tt.list)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseAddrs(%q) = %q, %v; want %q", tt.list, got, err, tt.want)
		}
	}
	for _, tt := range []struct{ list, want string }{
		{"", "no address: want HOST:PORT"},
		{"hub", `address "hub": want HOST:PORT`},
		{"hub:8443,", "address 2 is empty"},
		{"hub:8443,,hub2:8443", "address 2 is empty"},
		{":8443", `address ":8443": the host is missing`},
		{"hub:https", `address "hub:https": port "https" is not a number from 1 to 65535`},
		{"hub:0", `port "0" is not a number from 1 to 65535`},
		{"hub:70000", `port "70000" is not a number`},
		{"a:1,b:2,a:1", `address "a:1" is given twice`},
		{"::1:8443", `address "::1:8443": want HOST:PORT`},
	} {
		if _, err := ParseAddrs(tt.list); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseAddrs(%q) = %v; want an error with %q", tt.list, err, tt.want)
		}
	}
}

// fakeLookup answers DNS lookups from a table: the tests need names with
// several addresses, which no resolver on a test machine has.
func fakeLookup(table map[string][]string) func(context.Context, string) ([]string, error) {
	return func(_ context.Context, host string) ([]string, error) {
		if ips, ok := table[host]; ok {
			return ips, nil
		}
		return nil, errors.New("no such host")
	}
}

func TestHubsResolveNames(t *testing.T) {
	h := newHubs([]string{"hub.example:8443", "10.0.0.9:9443", "gone.example:8443"}, "", testlog.New(t))
	h.lookup = fakeLookup(map[string][]string{"hub.example": {"10.0.0.1", "10.0.0.2", "fd00::3"}})
	got := h.resolve(context.Background())
	want := []target{
		{"10.0.0.1:8443", "hub.example"}, {"10.0.0.2:8443", "hub.example"}, {"[fd00::3]:8443", "hub.example"},
		{"10.0.0.9:9443", "10.0.0.9"},
		// Kept as given, so its dial says why it failed.
		{"gone.example:8443", "gone.example"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("resolve = %v; want %v", got, want)
	}

	h = newHubs([]string{"hub.example:8443", "10.0.0.9:9443"}, "hub.internal", testlog.New(t))
	h.lookup = fakeLookup(map[string][]string{"hub.example": {"10.0.0.1"}})
	for _, tg := range h.resolve(context.Background()) {
		if tg.serverName != "hub.internal" {
			t.Errorf("%s is checked against %q; want the override hub.internal", tg.addr, tg.serverName)
		}
	}
}

// refused is a hub's refusal that asks the agent to come back after d.
func refused(t *testing.T, d time.Duration) error {
	st, err := status.New(codes.Unavailable, "go elsewhere").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestHubsTakeTurnsAndWaitOncePerRound(t *testing.T) {
	addrs := []string{"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}
	// A cancelled context makes every wait return at once; the backoff's
	// failure count says how many waits there were.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := newHubs(addrs, "", testlog.New(t))
	b := backoff.New(time.Hour, time.Hour)
	down := errors.New("connection refused")

	var order []string
	for range 3 * len(addrs) {
		order = append(order, h.pick(ctx).addr)
		h.pause(ctx, b, down)
	}
	if b.Failures() != 3 {
		t.Errorf("%d waits over three rounds of %d replicas all down; want 3, one per round", b.Failures(), len(addrs))
	}
	start := slices.Index(addrs, order[0])
	for i, got := range order {
		if want := addrs[(start+i)%len(addrs)]; got != want {
			t.Fatalf("attempt %d went to %s; want %s (turns %v)", i, got, want, order)
		}
	}

	// A hint is honoured at once, and the next attempt goes elsewhere.
	before, last := b.Failures(), h.pick(ctx).addr
	h.pause(ctx, b, refused(t, time.Minute))
	if b.Failures() != before+1 {
		t.Errorf("a shed session was not followed by a wait")
	}
	if next := h.pick(ctx).addr; next == last {
		t.Errorf("after a shed the agent went back to %s", last)
	}

	// After a session that held, every replica gets a try before a wait.
	h.newRound()
	before = b.Failures()
	for range len(addrs) - 1 {
		h.pick(ctx)
		h.pause(ctx, b, down)
	}
	if b.Failures() != before {
		t.Errorf("waited before every replica was tried after a session that held")
	}
}

func TestHubsStartAtRandom(t *testing.T) {
	addrs := []string{"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"}
	first := map[string]bool{}
	for range 200 {
		first[newHubs(addrs, "", testlog.New(t)).pick(context.Background()).addr] = true
	}
	if len(first) != len(addrs) {
		t.Errorf("200 agents started at %d of %d replicas; want every one", len(first), len(addrs))
	}
}

// TestSuccessorBoundsMovesInRollingRestarts plays every rolling restart of
// three and of four replicas, in every order, for an agent starting on
// each replica: it moves when its replica stops, to Successor's choice,
// and never more than twice.
func TestSuccessorBoundsMovesInRollingRestarts(t *testing.T) {
	for _, n := range []int{3, 4} {
		for _, order := range permutations(n) {
			for start := range n {
				cur, moves := start, 0
				left := make([]time.Time, n)
				clock := time.Unix(0, 0)
				for _, stopping := range order {
					clock = clock.Add(time.Minute)
					if stopping != cur {
						continue
					}
					left[cur] = clock
					cur = Successor(cur, left)
					moves++
				}
				if moves > 2 {
					t.Errorf("%d replicas restarted in order %v: an agent starting on %d moved %d times", n, order, start, moves)
				}
			}
		}
	}
	// Without a replica left before, the next one in turn.
	if got := Successor(2, make([]time.Time, 3)); got != 0 {
		t.Errorf("Successor(2) with none left = %d, want 0", got)
	}
}

func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}
