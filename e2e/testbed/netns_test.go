package testbed

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// echoServer listens on addr (port 0 for a free one) in the root namespace
// and echoes lines back, each prefixed with the address it saw the
// connection come from.
func echoServer(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(c.RemoteAddr().String() + " " + line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l
}

// roundTrip sends a line on c and returns the echo's peer address, or an
// error if no answer comes within wait.
func roundTrip(c net.Conn, wait time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	peer, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if rest != "ping" {
		return "", errors.New("garbled echo: " + line)
	}
	return peer, nil
}

// dialEdge dials addr from inside e, failing the test on error.
func dialEdge(t *testing.T, e *Edge, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := e.DialTCP(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s from edge %s: %v", addr, e.Namespace, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNetnsMasquerade: an edge reaches the hub side through the router, and
// the hub side sees the router's address, not the edge's; the edge reaches
// nothing else.
func TestNetnsMasquerade(t *testing.T) {
	n := NewNetwork(t)
	edges := []*Edge{n.AddEdge(t), n.AddEdge(t)}
	l := echoServer(t, net.JoinHostPort(n.HubIP.String(), "0"))

	for _, e := range edges {
		if e.IP == n.RouterIP || e.IP == n.HubIP {
			t.Fatalf("edge address %s is on the uplink", e.IP)
		}
		c := dialEdge(t, e, l.Addr().String())
		peer, err := roundTrip(c, 10*time.Second)
		if err != nil {
			t.Fatalf("echo from edge %s: %v", e.Namespace, err)
		}
		ap, err := netip.ParseAddrPort(peer)
		if err != nil {
			t.Fatal(err)
		}
		if ap.Addr() != n.RouterIP {
			t.Errorf("hub side saw edge %s (%s) as %s, want the router's %s", e.Namespace, e.IP, ap.Addr(), n.RouterIP)
		}
	}

	// No route out, checked without sending anything anywhere. Neither the
	// edge nor the router has a default route, so a route lookup (netlink
	// only, no packet) finds no way to any address off the test bed: not
	// the root namespace's own addresses or gateways, nor any other. The
	// addresses asked for are only looked up, never dialled.
	outside := append(rootAddresses(t), "192.0.2.1", "198.51.100.1", "203.0.113.1", "10.0.0.1", "172.16.0.1", "192.168.0.1")
	for _, ns := range []string{edges[0].Namespace, n.Router} {
		if out, err := run("ip", "-n", ns, "-4", "route", "show", "default"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("namespace %s: default route %q (%v), want none", ns, out, err)
		}
		for _, addr := range outside {
			out, err := run("ip", "-n", ns, "route", "get", addr)
			if err == nil || !strings.Contains(out, "Network is unreachable") {
				t.Errorf("ip -n %s route get %s: %q (%v), want Network is unreachable", ns, addr, strings.TrimSpace(out), err)
			}
		}
	}
	// A real dial, to an address no packet can leave for: the other edge,
	// which the root namespace blackholes too. It fails in the edge's own
	// stack.
	addr := net.JoinHostPort(edges[1].IP.String(), "80")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	_, err := edges[0].DialTCP(ctx, addr)
	cancel()
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial %s from edge %s: %v, want %v", addr, edges[0].Namespace, err, syscall.ENETUNREACH)
	}
}

// rootAddresses are the root namespace's IPv4 addresses and gateways, but
// for loopback and the test bed's own.
func rootAddresses(t *testing.T) []string {
	t.Helper()
	out, err := run("ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	var routes []struct {
		Gateway string `json:"gateway"`
		PrefSrc string `json:"prefsrc"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, r := range routes {
		for _, s := range []string{r.Gateway, r.PrefSrc} {
			a, err := netip.ParseAddr(s)
			if err == nil && !a.IsLoopback() && !netnsRange.Contains(a) && !slices.Contains(addrs, s) {
				addrs = append(addrs, s)
			}
		}
	}
	return addrs
}

// TestNetnsBlackhole: the root namespace cannot open a connection to an
// edge; the attempt fails locally at once instead of leaving the machine.
func TestNetnsBlackhole(t *testing.T) {
	n := NewNetwork(t)
	e := n.AddEdge(t)
	// Something listens in the edge, so only the route can refuse.
	if err := inNamespace(e.Namespace, func() error {
		l, err := net.Listen("tcp", net.JoinHostPort(e.IP.String(), "7000"))
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var d net.Dialer
	_, err := d.DialContext(ctx, "tcp", net.JoinHostPort(e.IP.String(), "7000"))
	// A blackhole route makes connect fail with EINVAL in the local stack;
	// a packet sent out would end in a timeout instead.
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("dial edge %s from the root namespace: %v, want %v from the blackhole route", e.IP, err, syscall.EINVAL)
	}
	out, err := run("ip", "route", "show", "type", "blackhole", e.subnet.String())
	if err != nil || !strings.Contains(out, e.subnet.String()) {
		t.Fatalf("ip route show type blackhole %s: %q, %v: want the edge's subnet", e.subnet, out, err)
	}
}

// TestNetnsRange: a network's subnets come from RFC 2544's benchmarking
// range, no route of the
// root namespace but the default one and the test bed's own covers them,
// and the root namespace's route lookups for them (netlink only, nothing
// sent) end on the uplink or in a blackhole, never at the default gateway.
func TestNetnsRange(t *testing.T) {
	before, err := usedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	n := NewNetwork(t)
	e := n.AddEdge(t)
	for _, p := range []netip.Prefix{n.uplink, e.subnet} {
		// The range the package documents, spelt out: a change of
		// netnsRange must be a deliberate one.
		if benchmarking := netip.MustParsePrefix("198.18.0.0/15"); !benchmarking.Contains(p.Addr()) || p.Bits() != 30 {
			t.Errorf("subnet %s: want a /30 in %s", p, benchmarking)
		}
		for _, u := range before {
			if u.Overlaps(p) {
				t.Errorf("subnet %s overlaps %s, a route or address of the machine's", p, u)
			}
		}
	}
	for a := e.subnet.Addr(); e.subnet.Contains(a); a = a.Next() {
		out, err := run("ip", "route", "get", a.String())
		if err == nil || !strings.Contains(out, "Invalid argument") {
			t.Errorf("ip route get %s: %q (%v), want the blackhole's Invalid argument", a, strings.TrimSpace(out), err)
		}
	}
	for _, a := range []netip.Addr{n.RouterIP, n.HubIP} {
		out, err := run("ip", "route", "get", a.String())
		if err != nil || !strings.Contains(out, " dev "+n.rootIf+" ") && !strings.Contains(out, " dev lo ") || strings.Contains(out, " via ") {
			t.Errorf("ip route get %s: %q (%v), want it on the uplink %s or local", a, strings.TrimSpace(out), err, n.rootIf)
		}
	}
}

// TestNetnsConnections: the router counts the connections edges open
// towards the uplink, and those opened from the uplink towards the router
// or, past the blackhole route, towards an edge.
func TestNetnsConnections(t *testing.T) {
	n := NewNetwork(t)
	e := n.AddEdge(t)
	if c := n.Connections(t); c != (Connections{}) {
		t.Fatalf("counters of a new network: %+v, want zero", c)
	}
	l := echoServer(t, net.JoinHostPort(n.HubIP.String(), "0"))
	for range 2 {
		c := dialEdge(t, e, l.Addr().String())
		if _, err := roundTrip(c, 10*time.Second); err != nil {
			t.Fatalf("echo from edge %s: %v", e.Namespace, err)
		}
	}
	// At least: a retransmitted SYN counts again.
	afterEdge := n.Connections(t)
	if afterEdge.FromEdges < 2 || afterEdge.FromUplink != 0 {
		t.Fatalf("after two connections from the edge: %+v, want FromEdges 2 or more, FromUplink 0", afterEdge)
	}

	// To the router itself: nothing listens, it answers with a reset.
	var d net.Dialer
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.RouterIP.String(), "1")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the router from the root namespace: %v, want %v", err, syscall.ECONNREFUSED)
	}
	afterRouter := n.Connections(t)
	if afterRouter.FromUplink == 0 || afterRouter.FromEdges != afterEdge.FromEdges {
		t.Fatalf("after a connection to the router: %+v, want FromUplink counted and FromEdges still %d", afterRouter, afterEdge.FromEdges)
	}
	// Through the router to the edge, with the blackhole route replaced by
	// one via the router for the length of the dial.
	inEdge := acceptorIn(t, e, net.JoinHostPort(e.IP.String(), "0"))
	if _, err := run("ip", "route", "replace", e.subnet.String(), "via", n.RouterIP.String()); err != nil {
		t.Fatal(err)
	}
	c, err := d.DialContext(ctx, "tcp", inEdge)
	if _, rerr := run("ip", "route", "replace", "blackhole", e.subnet.String()); rerr != nil {
		t.Fatalf("restore the blackhole route: %v", rerr)
	}
	if err != nil {
		t.Fatalf("dial the edge through the router: %v", err)
	}
	c.Close()
	if c := n.Connections(t); c.FromUplink <= afterRouter.FromUplink || c.FromEdges != afterEdge.FromEdges {
		t.Fatalf("after a connection through the router to the edge: %+v, want FromUplink above %d and FromEdges still %d", c, afterRouter.FromUplink, afterEdge.FromEdges)
	}
}

// acceptorIn listens at addr inside e and closes every connection it accepts.
func acceptorIn(t *testing.T, e *Edge, addr string) string {
	t.Helper()
	var l net.Listener
	if err := inNamespace(e.Namespace, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return closeEveryConnection(t, l)
}

// TestNetnsPartition: a partition drops new and established connections
// between an edge and the hub side, other edges carry on, and healing
// restores both.
func TestNetnsPartition(t *testing.T) {
	n := NewNetwork(t)
	cut, other := n.AddEdge(t), n.AddEdge(t)
	l := echoServer(t, net.JoinHostPort(n.HubIP.String(), "0"))
	established := dialEdge(t, cut, l.Addr().String())
	if _, err := roundTrip(established, 10*time.Second); err != nil {
		t.Fatalf("before the partition: %v", err)
	}

	cut.Partition(t)
	if _, err := roundTrip(established, 2*time.Second); !isTimeout(err) {
		t.Fatalf("established connection during the partition: %v, want no answer (timeout)", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err := cut.DialTCP(ctx, l.Addr().String())
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("new connection during the partition: %v, want no answer (timeout)", err)
	}
	if _, err := roundTrip(dialEdge(t, other, l.Addr().String()), 10*time.Second); err != nil {
		t.Fatalf("the other edge during the partition: %v", err)
	}

	cut.Heal(t)
	if _, err := roundTrip(dialEdge(t, cut, l.Addr().String()), 10*time.Second); err != nil {
		t.Fatalf("new connection after healing: %v", err)
	}
	// TCP retransmits what was dropped; the old connection answers again.
	if _, err := roundTrip(established, time.Minute); err != nil {
		t.Fatalf("established connection after healing: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestNetnsForward: a forwarded root-namespace service answers inside the
// edge on 127.0.0.1 at the same port, also while the edge is cut off.
func TestNetnsForward(t *testing.T) {
	n := NewNetwork(t)
	e := n.AddEdge(t)
	l := echoServer(t, "127.0.0.1:0")
	local := e.Forward(t, l.Addr().String())
	if local != l.Addr().String() {
		t.Fatalf("forwarded to %s, want the same address %s inside the edge", local, l.Addr())
	}
	c := dialEdge(t, e, local)
	if _, err := roundTrip(c, 10*time.Second); err != nil {
		t.Fatalf("through the forwarder: %v", err)
	}
	e.Partition(t)
	if _, err := roundTrip(c, 10*time.Second); err != nil {
		t.Fatalf("through the forwarder while cut off: %v", err)
	}
	if _, err := roundTrip(dialEdge(t, e, local), 10*time.Second); err != nil {
		t.Fatalf("new connection through the forwarder while cut off: %v", err)
	}
}

// TestNetnsCleanup: when the test that made a network ends, its
// namespaces, interfaces, routes and forwarders are gone.
func TestNetnsCleanup(t *testing.T) {
	var (
		n     *Network
		edges []*Edge
	)
	made := t.Run("make", func(t *testing.T) {
		n = NewNetwork(t)
		edges = []*Edge{n.AddEdge(t), n.AddEdge(t)}
		edges[0].Partition(t)
		edges[1].Forward(t, echoServer(t, "127.0.0.1:0").Addr().String())
	})
	if !made {
		t.FailNow()
	}
	namespaces, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		if strings.HasPrefix(ns.Name(), strings.TrimSuffix(n.Router, "-rt")) {
			t.Errorf("namespace %s left behind", ns.Name())
		}
	}
	if _, err := net.InterfaceByName(n.rootIf); err == nil {
		t.Errorf("interface %s left behind in the root namespace", n.rootIf)
	}
	used, err := usedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	subnets := []netip.Prefix{n.uplink}
	for _, e := range edges {
		subnets = append(subnets, e.subnet)
	}
	for _, u := range used {
		for _, s := range subnets {
			if u.Overlaps(s) {
				t.Errorf("route or address %s of network %s left behind", u, n.id)
			}
		}
	}
	n.mu.Lock()
	forwarders := n.forwarders
	n.mu.Unlock()
	for _, f := range forwarders {
		f.mu.Lock()
		closed, conns := f.closed, len(f.conns)
		f.mu.Unlock()
		if !closed || conns > 0 {
			t.Errorf("forwarder %s: closed %v, %d connections left", f.l.Addr(), closed, conns)
		}
	}
	if err := n.close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestNetnsSweep: a namespace and blackhole route left by a test binary
// that died are removed by the next network made.
func TestNetnsSweep(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%s%d-%s-e1", netnsPrefix, dead.Process.Pid, randomHex(3))
	unlock, err := lockNetns()
	if err != nil {
		t.Fatal(err)
	}
	subnet, err := freeSubnet()
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	t.Cleanup(func() { // only if the sweep failed
		_, _ = run("ip", "netns", "delete", name)
		_, _ = run("ip", "route", "delete", "blackhole", subnet.String())
	})
	steps := [][]string{
		{"ip", "route", "add", "blackhole", subnet.String()},
		{"ip", "netns", "add", name},
		{"ip", "-n", name, "link", "add", edgeIf, "type", "veth", "peer", "name", "peer0"},
		{"ip", "-n", name, "addr", "add", prefixOf(subnet.Addr().Next().Next(), subnet), "dev", edgeIf},
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			unlock()
			t.Fatal(err)
		}
	}
	unlock()

	NewNetwork(t)
	if _, err := os.Stat(filepath.Join("/run/netns", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace %s not removed: %v", name, err)
	}
	if out, err := run("ip", "route", "show", "type", "blackhole", subnet.String()); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("stale blackhole route %s not removed: %q, %v", subnet, out, err)
	}
}
