package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/clientcmd"
)

// Network test hosts.
//
// A Network is a router namespace joined to the root namespace by a veth
// pair (the "uplink"), with edge namespaces behind it, each on a veth pair
// of its own:
//
//	root (hub: HubIP) ── uplink ── router (RouterIP, masquerade) ── edge (IP)
//
// The router forwards between its edges and the uplink and masquerades what
// leaves on the uplink, so the root namespace only ever sees RouterIP. No
// namespace has a default route: an edge reaches the uplink's subnet and
// nothing else, and the root namespace has a blackhole route for every edge
// subnet, so a dial from the root namespace to an edge fails locally and at
// once instead of leaving through the machine's default route. Partition
// drops everything the router forwards to and from one edge; Heal lets it
// through again.
//
// Subnets are /30s in netnsRange (198.18.0.0/15), drawn at random under a
// machine-wide file lock and checked against every address and route of
// the root namespace, where each one in use is visible (the uplink's
// address, the edges' blackhole routes), so test binaries running at once
// do not collide. Why that range, and why no real host can be hidden by it,
// is said at netnsRange.
//
// The router counts the connections it sees start (nftables counters, see
// Network.Connections): those from the edges towards the uplink, and those
// from the uplink into the router or through it towards an edge, which
// nothing should ever open.

const (
	// netnsLockFile serialises subnet allocation between test binaries.
	netnsLockFile = "/run/drover-testbed-netns.lock"
	// netnsPrefix starts every namespace the test bed makes.
	netnsPrefix = "drv-"
	// forwardDialTimeout bounds a forwarder's dial in the root namespace.
	forwardDialTimeout = 5 * time.Second
	// uplinkIf and edgeIf name the router's and the edges' interfaces
	// inside their own namespaces, where names need not be unique.
	uplinkIf = "wan"
	edgeIf   = "eth0"
)

// netnsRange is where every subnet of the test bed's networks comes from:
// 198.18.0.0/15, the block RFC 2544 sets aside for benchmarking network
// devices in a lab, which RFC 6890 marks not globally reachable. Addresses
// a site uses are elsewhere: 10/8, 172.16/12 and 192.168/16 are private
// networks often reached through the default gateway (a VPC, an office
// network), 100.64/10 is carrier-grade NAT (and Tailscale), 169.254/16
// holds cloud metadata services reached through the gateway, and even the
// documentation ranges (192.0.2.0/24 and its siblings) are some machines'
// real uplink. The root namespace gets an address of the uplink's /30 and a
// blackhole route for every edge's /30 while a network exists, and those
// win over the default route for their addresses, so they could hide real
// hosts the default route leads to. Here they cannot: a /30 is taken only
// if no route of the root namespace but the default one covers it, in any
// table, and no address is in it (freeSubnet), so a machine that does use
// the range (a lab, a proxy's fake-IP block routed to its tunnel) shows it
// in its routes and the test bed picks around it or fails saying so;
// through the default gateway the range reaches no host, as it is not
// routed outside a lab. And while a network exists, what the root
// namespace sends to its subnets stays on the machine: the uplink's /30 is
// on the veth pair, and every edge's /30 is a blackhole.
var netnsRange = netip.MustParsePrefix("198.18.0.0/15")

// Network is a router namespace with edge namespaces behind it. Make it
// with NewNetwork; it is removed when the test ends.
type Network struct {
	// Router is the router's namespace name.
	Router string
	// HubIP is the root namespace's end of the uplink: a hub that edges
	// must reach listens here.
	HubIP netip.Addr
	// RouterIP is the router's end of the uplink, the source address the
	// root namespace sees for every edge (masquerade).
	RouterIP netip.Addr

	id     string // in every name this network makes
	uplink netip.Prefix
	rootIf string // the root namespace's end of the uplink

	mu         sync.Mutex // guards the fields below
	edges      []*Edge
	namespaces []string       // made, to delete
	blackholes []netip.Prefix // root-namespace routes, to delete
	forwarders []*forwarder
	closed     bool
}

// Edge is one edge namespace behind a Network's router.
type Edge struct {
	// Namespace is the edge's network namespace name (ip netns).
	Namespace string
	// IP is the edge's address; nothing outside its subnet routes to it.
	IP netip.Addr

	net     *Network
	routeIf string // the router's interface towards this edge
	subnet  netip.Prefix
}

// NewNetwork makes a router namespace linked to the root namespace, with
// forwarding and masquerade on, and removes everything it made (and what
// AddEdge adds) when the test ends, also when it fails, and when the test
// binary ends through Main before that. It needs root.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	requireMain(t)
	if err := requireNetAdmin(); err != nil {
		t.Fatal(err)
	}
	sweepStaleNetworks(t)
	id := randomHex(3)
	n := &Network{
		id:     id,
		Router: fmt.Sprintf("%s%d-%s-rt", netnsPrefix, os.Getpid(), id),
		rootIf: "drv" + id + "up",
	}
	t.Cleanup(func() {
		if err := n.close(); err != nil {
			t.Errorf("testbed: %v", err)
		}
	})
	atExit(func() {
		if err := n.close(); err != nil {
			fmt.Fprintf(os.Stderr, "testbed: %v\n", err)
		}
	})
	if err := n.setUp(); err != nil {
		t.Fatalf("testbed: network %s: %v", id, err)
	}
	t.Logf("testbed: network %s: hub side %s, router %s (namespace %s)", id, n.HubIP, n.RouterIP, n.Router)
	return n
}

// requireNetAdmin returns an error saying how to run the tests unless the
// process can make namespaces and run ip and nft.
func requireNetAdmin() error {
	if os.Geteuid() != 0 {
		return errors.New("testbed: network namespace tests need root (ip netns, veth pairs, nft): run them as root, as CI does")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("testbed: %s is missing: install iproute2 and nftables (`make deps` as root)", bin)
		}
	}
	return nil
}

// routerRules is the router's nftables table: masquerade on the uplink, a
// set of edge interfaces whose traffic is dropped (partitions), and
// counters of the connections that start through the router, counted
// before a partition drops them so that an attempt counts too.
const routerRules = `table ip drover {
	counter ` + counterFromEdges + ` {
	}
	counter ` + counterFromUplink + ` {
	}
	set cut {
		type ifname
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "` + uplinkIf + `" ct state new counter name "` + counterFromUplink + `"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "` + uplinkIf + `" ct state new counter name "` + counterFromUplink + `"
		oifname "` + uplinkIf + `" ct state new counter name "` + counterFromEdges + `"
		iifname @cut drop
		oifname @cut drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + uplinkIf + `" masquerade
	}
}
`

// The router's counters of new connections: packets in conntrack state
// new, which are a connection's first (a TCP SYN, the first datagram of a
// UDP or ICMP flow) and its retransmissions. A count is therefore at least
// the number of connections attempted, and 0 only if there was none.
const (
	// counterFromEdges: forwarded from an edge out of the uplink.
	counterFromEdges = "from_edges"
	// counterFromUplink: from the uplink to the router itself or forwarded
	// through it towards an edge.
	counterFromUplink = "from_uplink"
)

// Connections counts the connections that started through the router.
type Connections struct {
	// FromEdges is how many an edge opened towards the uplink (the hub).
	FromEdges uint64
	// FromUplink is how many the root namespace's side opened towards the
	// router or an edge behind it: what a hub dialling a cluster would
	// open. Blackhole routes and masquerade keep it at 0 unless something
	// routes around them.
	FromUplink uint64
}

// Connections reads the router's counters of new connections since the
// network was made.
func (n *Network) Connections(t testing.TB) Connections {
	t.Helper()
	var c Connections
	for name, v := range map[string]*uint64{counterFromEdges: &c.FromEdges, counterFromUplink: &c.FromUplink} {
		out, err := run("ip", "netns", "exec", n.Router, "nft", "-j", "list", "counter", "ip", "drover", name)
		if err != nil {
			t.Fatalf("testbed: network %s: read counter %s: %v", n.id, name, err)
		}
		if *v, err = counterPackets(out, name); err != nil {
			t.Fatalf("testbed: network %s: %v", n.id, err)
		}
	}
	return c
}

// counterPackets reads the packets of the named counter from `nft -j list
// counter` output.
func counterPackets(out, name string) (uint64, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, fmt.Errorf("parse nft counter %s: %w", name, err)
	}
	for _, o := range doc.Nftables {
		if o.Counter != nil && o.Counter.Name == name {
			return o.Counter.Packets, nil
		}
	}
	return 0, fmt.Errorf("nft counter %s: not in %q", name, out)
}

func (n *Network) setUp() error {
	unlock, err := lockNetns()
	if err != nil {
		return err
	}
	defer unlock()
	if n.uplink, err = freeSubnet(); err != nil {
		return err
	}
	n.HubIP = n.uplink.Addr().Next()
	n.RouterIP = n.HubIP.Next()
	if err := n.addNamespace(n.Router); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "link", "add", n.rootIf, "type", "veth", "peer", "name", uplinkIf, "netns", n.Router},
		{"ip", "addr", "add", prefixOf(n.HubIP, n.uplink), "dev", n.rootIf},
		{"ip", "link", "set", "dev", n.rootIf, "up"},
		{"ip", "-n", n.Router, "addr", "add", prefixOf(n.RouterIP, n.uplink), "dev", uplinkIf},
		{"ip", "-n", n.Router, "link", "set", "dev", uplinkIf, "up"},
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			return err
		}
	}
	// /proc/sys/net shows the namespace of the thread that opens it.
	err = inNamespace(n.Router, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("turn on forwarding in %s: %w", n.Router, err)
	}
	_, err = runInput(routerRules, "ip", "netns", "exec", n.Router, "nft", "-f", "-")
	return err
}

// AddEdge makes an edge namespace behind the router. Its only route is to
// the uplink's subnet, through the router; the root namespace gets a
// blackhole route for its subnet.
func (n *Network) AddEdge(t testing.TB) *Edge {
	t.Helper()
	e, err := n.addEdge()
	if err != nil {
		t.Fatalf("testbed: network %s: add edge: %v", n.id, err)
	}
	t.Logf("testbed: network %s: edge %s at %s (namespace %s)", n.id, e.routeIf, e.IP, e.Namespace)
	return e
}

func (n *Network) addEdge() (*Edge, error) {
	unlock, err := lockNetns()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("the network is removed")
	}
	index := len(n.edges) + 1
	n.mu.Unlock()

	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	// The blackhole route first: it also reserves the subnet for other
	// test binaries, which see it in the root namespace.
	if _, err := run("ip", "route", "add", "blackhole", subnet.String()); err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.blackholes = append(n.blackholes, subnet)
	n.mu.Unlock()

	e := &Edge{
		Namespace: strings.TrimSuffix(n.Router, "-rt") + "-e" + strconv.Itoa(index),
		net:       n,
		routeIf:   "e" + strconv.Itoa(index),
		subnet:    subnet,
	}
	routerIP := subnet.Addr().Next()
	e.IP = routerIP.Next()
	if err := n.addNamespace(e.Namespace); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", n.Router, "link", "add", e.routeIf, "type", "veth", "peer", "name", edgeIf, "netns", e.Namespace},
		{"ip", "-n", n.Router, "addr", "add", prefixOf(routerIP, subnet), "dev", e.routeIf},
		{"ip", "-n", n.Router, "link", "set", "dev", e.routeIf, "up"},
		{"ip", "-n", e.Namespace, "addr", "add", prefixOf(e.IP, subnet), "dev", edgeIf},
		{"ip", "-n", e.Namespace, "link", "set", "dev", edgeIf, "up"},
		// Only the uplink's subnet: there is no default route to leave by.
		{"ip", "-n", e.Namespace, "route", "add", n.uplink.String(), "via", routerIP.String()},
	}
	for _, s := range steps {
		if _, err := run(s...); err != nil {
			return nil, err
		}
	}
	n.mu.Lock()
	n.edges = append(n.edges, e)
	n.mu.Unlock()
	return e, nil
}

// addNamespace makes a namespace with its loopback up and records it for
// removal.
func (n *Network) addNamespace(name string) error {
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	n.mu.Lock()
	n.namespaces = append(n.namespaces, name)
	n.mu.Unlock()
	_, err := run("ip", "-n", name, "link", "set", "dev", "lo", "up")
	return err
}

// Partition makes the router drop everything between the edge and the
// uplink, established connections included: packets vanish, as on a cut
// link, rather than being refused.
func (e *Edge) Partition(t testing.TB) {
	t.Helper()
	if _, err := run("ip", "netns", "exec", e.net.Router, "nft", "add", "element", "ip", "drover", "cut", "{ "+e.routeIf+" }"); err != nil {
		t.Fatalf("testbed: partition edge %s: %v", e.Namespace, err)
	}
	t.Logf("testbed: edge %s (%s) cut off", e.Namespace, e.IP)
}

// Heal undoes Partition.
func (e *Edge) Heal(t testing.TB) {
	t.Helper()
	if _, err := run("ip", "netns", "exec", e.net.Router, "nft", "delete", "element", "ip", "drover", "cut", "{ "+e.routeIf+" }"); err != nil {
		t.Fatalf("testbed: heal edge %s: %v", e.Namespace, err)
	}
	t.Logf("testbed: edge %s (%s) reconnected", e.Namespace, e.IP)
}

// Exec is the command prefix that runs a program inside the edge's
// namespace, for AgentOptions.Wrap.
func (e *Edge) Exec() []string {
	return []string{"ip", "netns", "exec", e.Namespace}
}

// DialTCP opens a TCP connection from inside the edge's namespace.
func (e *Edge) DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(e.Namespace, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		conn = c
		return err
	})
	return conn, err
}

// Forward makes target, a TCP address in the root namespace, reachable
// inside the edge's namespace at 127.0.0.1 on the same port, and returns
// that address. It stands for what is local to an edge site (its cluster's
// API server, a Git mirror): it does not pass the router, so a partition
// leaves it up. Keeping the port keeps URLs that name the target valid.
func (e *Edge) Forward(t testing.TB, target string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(target)
	if err != nil {
		t.Fatalf("testbed: forward to %q: %v", target, err)
	}
	f := &forwarder{target: target, conns: map[net.Conn]struct{}{}}
	err = inNamespace(e.Namespace, func() error {
		// The socket is made by this thread, so it listens in the edge's
		// namespace; accepting and dialling happen on ordinary threads in
		// the root namespace.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		f.l = l
		return err
	})
	if err != nil {
		t.Fatalf("testbed: forward %s in edge %s: %v", target, e.Namespace, err)
	}
	n := e.net
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		f.l.Close()
		t.Fatalf("testbed: forward %s in edge %s: the network is removed", target, e.Namespace)
	}
	n.forwarders = append(n.forwarders, f)
	n.mu.Unlock()
	f.wg.Go(f.serve)
	return f.l.Addr().String()
}

// Kubeconfig forwards the cluster's API server into the edge (see Forward)
// and returns the path of a kubeconfig for it, with the cluster's admin
// credentials. The API server's certificate names 127.0.0.1, so it
// verifies as it does from the root namespace.
func (e *Edge) Kubeconfig(t testing.TB, c *Cluster) string {
	t.Helper()
	u, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatalf("testbed: cluster %s: API server address %q: %v", c.Name, c.Config.Host, err)
	}
	local := e.Forward(t, u.Host)
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatalf("testbed: cluster %s: %v", c.Name, err)
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + local
	}
	path := filepath.Join(t.TempDir(), c.Name+"-"+e.Namespace+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("testbed: cluster %s: %v", c.Name, err)
	}
	return path
}

// close removes what the network made. It runs from t.Cleanup and from
// Main's exit; the second call does nothing.
func (n *Network) close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	forwarders, namespaces, blackholes := n.forwarders, n.namespaces, n.blackholes
	n.mu.Unlock()

	for _, f := range forwarders {
		f.close()
	}
	var errs []error
	// The kernel dismantles a deleted namespace in the background, so the
	// uplink's root end (and its address and route) would outlive the
	// call for a moment: delete it, and with it its peer, first.
	if _, err := net.InterfaceByName(n.rootIf); err == nil {
		if _, err := run("ip", "link", "delete", "dev", n.rootIf); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting a namespace deletes its interfaces, their veth peers and
	// its nft rules.
	for i := len(namespaces) - 1; i >= 0; i-- {
		if _, err := run("ip", "netns", "delete", namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range blackholes {
		if _, err := run("ip", "route", "delete", "blackhole", p.String()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove network %s: %w", n.id, err)
	}
	return nil
}

// sweepStaleNetworks removes what networks of test binaries that died
// without cleaning up (SIGKILL, a crash) left behind: namespaces named
// drv-PID-... whose process is gone, and the blackhole routes of their
// edges, found from each edge's own address.
func sweepStaleNetworks(t testing.TB) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return // none made yet
	}
	for _, ent := range entries {
		name := ent.Name()
		pidText, rest, ok := strings.Cut(strings.TrimPrefix(name, netnsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if !strings.HasPrefix(name, netnsPrefix) || !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // its owner still runs
		}
		if !strings.HasSuffix(rest, "-rt") {
			if subnet, err := edgeSubnet(name); err == nil {
				_, _ = run("ip", "route", "delete", "blackhole", subnet.String())
			}
		}
		if _, err := run("ip", "netns", "delete", name); err != nil {
			t.Logf("testbed: remove stale namespace %s: %v", name, err)
			continue
		}
		t.Logf("testbed: removed namespace %s of a test binary that died (pid %d)", name, pid)
	}
}

// edgeSubnet reads the subnet of an edge namespace's interface.
func edgeSubnet(namespace string) (netip.Prefix, error) {
	subnets, err := addrSubnets("ip", "-n", namespace, "-j", "-4", "addr", "show", "dev", edgeIf)
	if err != nil {
		return netip.Prefix{}, err
	}
	if len(subnets) == 0 {
		return netip.Prefix{}, fmt.Errorf("namespace %s: no IPv4 address on %s", namespace, edgeIf)
	}
	return subnets[0], nil
}

// forwarder copies TCP connections accepted in a namespace to a target in
// the root namespace.
type forwarder struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	conns  map[net.Conn]struct{}
	closed bool
}

func (f *forwarder) serve() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return // closed
		}
		f.wg.Go(func() { f.pipe(c) })
	}
}

func (f *forwarder) pipe(in net.Conn) {
	out, err := net.DialTimeout("tcp", f.target, forwardDialTimeout)
	if err != nil {
		in.Close()
		return
	}
	if !f.track(in, out) {
		return
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done // one side ended: end both
	f.untrack(in, out)
	<-done
}

// track records conns so close can end them; false (and conns closed) if
// the forwarder is closed.
func (f *forwarder) track(conns ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *forwarder) untrack(conns ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(f.conns, c)
	}
}

func (f *forwarder) close() {
	f.l.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// inNamespace runs fn on a thread in the named network namespace; sockets
// fn makes belong to that namespace for good. The thread returns to its
// own namespace afterwards and only then goes back to the runtime, which
// may run anything on it next. If it cannot return, it stays locked and
// ends with the goroutine, the lesser harm (children are forked by
// internal/spawn, so ending a thread kills none of them).
func inNamespace(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer own.Close()
		ns, err := os.Open(filepath.Join("/run/netns", name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open namespace: %w", err)
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		err = fn()
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// lockNetns takes the machine-wide allocation lock and returns its release.
func lockNetns() (func(), error) {
	f, err := os.OpenFile(netnsLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", netnsLockFile, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", netnsLockFile, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// freeSubnet returns a random /30 of netnsRange that overlaps no address
// or route of the root namespace but the default route. Call it under
// lockNetns, and reserve the subnet (an address or a route) before
// unlocking.
func freeSubnet() (netip.Prefix, error) {
	used, err := usedPrefixes()
	if err != nil {
		return netip.Prefix{}, err
	}
	base := netnsRange.Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	subnets := uint32(1) << (30 - netnsRange.Bits()) // /30s in the range
	for range 100 {
		a := start + rand.Uint32N(subnets)*4
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), 30)
		free := true
		for _, u := range used {
			if u.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /30 in %s after 100 tries: the machine's routes or addresses cover it (ip route show table all)", netnsRange)
}

// usedPrefixes lists the root namespace's IPv4 addresses' subnets and its
// routes in every table, default routes left out: "default", and routes
// wider than a /8, which are a default route split in parts (a VPN's
// 0.0.0.0/1 and 128.0.0.0/1) rather than a way to a site's own hosts.
func usedPrefixes() ([]netip.Prefix, error) {
	out, err := run("ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return nil, fmt.Errorf("parse ip route: %w", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if r.Dst == "default" || r.Dst == "" {
			continue
		}
		p, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			a, err := netip.ParseAddr(r.Dst)
			if err != nil {
				return nil, fmt.Errorf("parse ip route: destination %q", r.Dst)
			}
			p = netip.PrefixFrom(a, 32)
		}
		if p.Bits() < 8 {
			continue
		}
		used = append(used, p)
	}

	subnets, err := addrSubnets("ip", "-j", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	return append(used, subnets...), nil
}

// addrSubnets runs an `ip -j -4 addr show` command and returns the subnets
// of the addresses it lists.
func addrSubnets(args ...string) ([]netip.Prefix, error) {
	out, err := run(args...)
	if err != nil {
		return nil, err
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("parse ip addr: %w", err)
	}
	var subnets []netip.Prefix
	for _, l := range links {
		for _, ai := range l.AddrInfo {
			a, err := netip.ParseAddr(ai.Local)
			if err != nil {
				return nil, fmt.Errorf("parse ip addr: address %q", ai.Local)
			}
			subnets = append(subnets, netip.PrefixFrom(a, ai.PrefixLen).Masked())
		}
	}
	return subnets, nil
}

// prefixOf is addr with p's length, as ip addr add wants it.
func prefixOf(addr netip.Addr, p netip.Prefix) string {
	return netip.PrefixFrom(addr, p.Bits()).String()
}

// run runs a command and returns its output; the error names the command
// and carries its output.
func run(args ...string) (string, error) {
	return runInput("", args...)
}

func runInput(stdin string, args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
