package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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

	// No route out: a dial anywhere but the uplink fails in the edge's
	// own stack, with nothing sent.
	for _, addr := range []string{"192.0.2.1:80", "8.8.8.8:53", edges[1].IP.String() + ":80"} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := edges[0].DialTCP(ctx, addr)
		cancel()
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("dial %s from edge %s: %v, want %v", addr, edges[0].Namespace, err, syscall.ENETUNREACH)
		}
	}
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
