package testbed

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/internal/testlog"
)

// Replicas are drover-hub replicas of a test on one PostgreSQL, joined by
// gossip: they share the agent CA and the credential key, as a deployment's
// replicas share them from Secrets, and each has its own name, data
// directory, addresses and gossip address.
type Replicas struct {
	Hubs []*HubProcess
	// GossipAddrs are the replicas' --peer-addr, each on a loopback
	// address of its own (127.0.0.11, .12, ...) so that a test can cut
	// the gossip between them with packet filters.
	GossipAddrs []string
	// CAFile is the agent CA's certificate, which agents trust.
	CAFile string
	// KeyFile holds the gossip key.
	KeyFile string
}

// StartReplicas starts n drover-hub replicas, named hub-0 ... hub-(n-1),
// one after the other, and returns once each serves. o applies to each:
// DatabaseURL is required, and Args go to every replica; addresses and
// data directories are each replica's own.
func StartReplicas(t testing.TB, n int, o HubOptions) *Replicas {
	t.Helper()
	dir := t.TempDir()
	r := &Replicas{KeyFile: filepath.Join(dir, "gossip.key")}
	if _, err := pki.LoadOrCreateCA(filepath.Join(dir, "pki"), testlog.New(t)); err != nil {
		t.Fatalf("testbed: replicas' CA: %v", err)
	}
	r.CAFile = filepath.Join(dir, "pki", pki.CACertFile)
	secretKey := filepath.Join(dir, "secret.key")
	if _, err := secrets.LoadOrCreateKey(secretKey); err != nil {
		t.Fatalf("testbed: replicas' credential key: %v", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := os.WriteFile(r.KeyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		addr, err := freeAddrOn(fmt.Sprintf("127.0.0.%d", 11+i))
		if err != nil {
			t.Fatalf("testbed: gossip address: %v", err)
		}
		r.GossipAddrs = append(r.GossipAddrs, addr)
	}
	for i := range n {
		ro := o
		ro.DataDir = filepath.Join(dir, fmt.Sprintf("hub-%d", i), "data")
		// Its log goes beside the data directory.
		if err := os.MkdirAll(filepath.Dir(ro.DataDir), 0o700); err != nil {
			t.Fatal(err)
		}
		ro.Args = append([]string{
			"--replica", fmt.Sprintf("hub-%d", i),
			"--ca-cert", r.CAFile,
			"--ca-key", filepath.Join(dir, "pki", pki.CAKeyFile),
			"--secret-key-file", secretKey,
			"--peer-addr", r.GossipAddrs[i],
			"--peers", strings.Join(r.GossipAddrs, ","),
			"--gossip-key-file", r.KeyFile,
		}, o.Args...)
		if i > 0 {
			ro.AdminToken = r.Hubs[0].AdminToken
		}
		h := StartHub(t, ro)
		h.CAFile = r.CAFile
		h.name = fmt.Sprintf("drover-hub hub-%d", i)
		r.Hubs = append(r.Hubs, h)
	}
	return r
}

// AgentAddrs is every replica's agent endpoint, comma-separated, for an
// agent's --hub.
func (r *Replicas) AgentAddrs() string {
	addrs := make([]string, len(r.Hubs))
	for i, h := range r.Hubs {
		addrs[i] = h.AgentAddr
	}
	return strings.Join(addrs, ",")
}

// freeAddrOn returns host:port with a port free for TCP and UDP on host
// (gossip uses both on one port).
func freeAddrOn(host string) (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return "", err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return net.JoinHostPort(host, strconv.Itoa(port)), nil
	}
	return "", fmt.Errorf("no port free for both TCP and UDP on %s", host)
}

// CutGossip drops every packet, TCP and UDP, sent to any replica's gossip
// address, with an nftables table in the test's network namespace, so
// that each replica sees the others fail while PostgreSQL, agents and
// API clients still reach every one. It returns when the rules are in;
// HealGossip (or the end of the test) removes them.
func (r *Replicas) CutGossip(t testing.TB) {
	t.Helper()
	if err := requireNetAdmin(); err != nil {
		t.Fatal(err)
	}
	var rules strings.Builder
	fmt.Fprintf(&rules, "table ip %s {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n", r.gossipTable())
	for _, addr := range r.GossipAddrs {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, "\t\tip daddr %s tcp dport %s drop\n\t\tip daddr %s udp dport %s drop\n", host, port, host, port)
	}
	rules.WriteString("\t}\n}\n")
	if _, err := runInput(rules.String(), "nft", "-f", "-"); err != nil {
		t.Fatalf("testbed: cut gossip: %v", err)
	}
	t.Cleanup(func() { r.healGossip() })
}

// HealGossip lets gossip between the replicas through again.
func (r *Replicas) HealGossip(t testing.TB) {
	t.Helper()
	if err := r.healGossip(); err != nil {
		t.Fatalf("testbed: heal gossip: %v", err)
	}
}

func (r *Replicas) healGossip() error {
	out, err := run("nft", "list", "tables")
	if err != nil || !strings.Contains(out, r.gossipTable()) {
		return err
	}
	_, err = run("nft", "delete", "table", "ip", r.gossipTable())
	return err
}

// gossipTable names the nftables table of the replicas' cut: one per
// process and set of replicas, so tests running at once keep apart.
func (r *Replicas) gossipTable() string {
	_, port, _ := net.SplitHostPort(r.GossipAddrs[0])
	return fmt.Sprintf("drover_gossip_%d_%s", os.Getpid(), port)
}
