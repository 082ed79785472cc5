package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
)

// Git connections.
//
// Tests send traffic to loopback and the test bed's own namespaces only.
// Drover's Git code (the agent's source cache, the hub's resolver) connects
// through go-git's transports, which this package wraps in every test
// binary that imports it, before any test runs: every session go-git is
// asked to open is screened before it connects, and one to a host that is
// not a loopback address is refused without resolving or dialling
// anything. WatchGitDials records the sessions and fails the test for a
// refused one; a test that says a URL is refused before any connection
// checks GitDials.To.

func init() {
	// In init, so that no test's go-git reads the map while it changes.
	for scheme, next := range client.Protocols {
		client.InstallProtocol(scheme, guardedTransport{next: next})
	}
}

// gitGuard holds the records of the tests that watch.
var gitGuard struct {
	mu      sync.Mutex // guards the fields below
	logs    map[*GitDials]struct{}
	refused []string // every refused endpoint, for Main to fail the binary
}

// GitDials records the Git sessions go-git was asked to open while a test
// ran, including those of other tests running at the same time.
type GitDials struct {
	mu         sync.Mutex // guards the fields below
	endpoints  []transport.Endpoint
	offMachine []string
}

// refusedGitDials returns the endpoints off the machine that any test of
// this binary had go-git try to reach.
func refusedGitDials() []string {
	gitGuard.mu.Lock()
	defer gitGuard.mu.Unlock()
	return append([]string(nil), gitGuard.refused...)
}

// WatchGitDials records every session go-git is asked to open until t
// ends. At the end, t fails if any was to a host off this machine (which
// was refused).
func WatchGitDials(t testing.TB) *GitDials {
	t.Helper()
	d := &GitDials{}
	gitGuard.mu.Lock()
	if gitGuard.logs == nil {
		gitGuard.logs = map[*GitDials]struct{}{}
	}
	gitGuard.logs[d] = struct{}{}
	gitGuard.mu.Unlock()
	t.Cleanup(func() {
		gitGuard.mu.Lock()
		delete(gitGuard.logs, d)
		gitGuard.mu.Unlock()
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, ep := range d.offMachine {
			t.Errorf("testbed: go-git was asked to connect to %s, off this machine (refused): tests reach loopback only", ep)
		}
	})
	return d
}

// To returns the sessions recorded for the repository rawURL names (same
// host, port and path; credentials ignored), as redacted endpoints.
func (d *GitDials) To(rawURL string) []string {
	want, err := transport.NewEndpoint(rawURL)
	if err != nil {
		return nil // go-git could not have dialled it either
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, ep := range d.endpoints {
		if ep.Host == want.Host && ep.Port == want.Port && strings.TrimSuffix(ep.Path, "/") == strings.TrimSuffix(want.Path, "/") {
			out = append(out, ep.String())
		}
	}
	return out
}

// guardedTransport records and screens every session before next opens it.
type guardedTransport struct {
	next transport.Transport
}

func (g guardedTransport) NewUploadPackSession(ep *transport.Endpoint, auth transport.AuthMethod) (transport.UploadPackSession, error) {
	if err := screenGitDial(ep); err != nil {
		return nil, err
	}
	return g.next.NewUploadPackSession(ep, auth)
}

func (g guardedTransport) NewReceivePackSession(ep *transport.Endpoint, auth transport.AuthMethod) (transport.ReceivePackSession, error) {
	if err := screenGitDial(ep); err != nil {
		return nil, err
	}
	return g.next.NewReceivePackSession(ep, auth)
}

// screenGitDial records ep with every watching test and refuses it unless
// it is local: a loopback address, or a path (the file transport).
func screenGitDial(ep *transport.Endpoint) error {
	rec := *ep
	rec.User, rec.Password = "", ""
	addr, err := netip.ParseAddr(strings.Trim(ep.Host, "[]"))
	local := ep.Protocol == "file" || err == nil && addr.IsLoopback()
	gitGuard.mu.Lock()
	defer gitGuard.mu.Unlock()
	for d := range gitGuard.logs {
		d.mu.Lock()
		d.endpoints = append(d.endpoints, rec)
		if !local {
			d.offMachine = append(d.offMachine, rec.String())
		}
		d.mu.Unlock()
	}
	if local {
		return nil
	}
	gitGuard.refused = append(gitGuard.refused, rec.String())
	fmt.Fprintf(os.Stderr, "testbed: refused a Git connection to %s: tests reach loopback only\n", rec.String())
	return fmt.Errorf("testbed: Git connection to %s refused: tests reach loopback only", rec.String())
}
