package testbed

import (
	"bufio"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Who fetched.
//
// The hub and the agents fetch from the same repository URL with the
// same Git client, so nothing in a request says which program sent it. A
// test that counts one program's fetches (an agent's, not the hub's
// compares) has the server find the process that holds the client's end
// of each fetch's connection: the connection is on loopback, so its socket
// is in this network namespace's /proc/net/tcp, and the process holding
// it has the socket's inode among its open files.

// WithFetchOwners makes the server record which process made each fetch
// (a POST to git-upload-pack, which carries a fetch's wants and sends its
// pack), for FetchesBy. Linux only; it reads /proc at every fetch.
func WithFetchOwners() GitOption {
	return func(c *gitConfig) { c.owners = true }
}

// FetchesBy is how many fetches the process pid has made from the server,
// which must have been started WithFetchOwners.
func (g *Git) FetchesBy(pid int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fetchesBy[pid]
}

// UnownedFetches is how many fetches the server could not tie to a
// process: a test that counts by process checks it stays 0.
func (g *Git) UnownedFetches() int { return g.FetchesBy(0) }

func (g *Git) countFetch(r *http.Request) {
	// The kernel writes /proc/net/tcp a page at a time, so a socket can
	// be missed while others on the machine come and go: look again. The
	// client's end stays open meanwhile, waiting for the response.
	var pid int
	for range ownerLookups {
		var err error
		if pid, err = socketOwner(r.RemoteAddr); err == nil {
			break
		}
		pid = 0
		time.Sleep(10 * time.Millisecond)
	}
	g.mu.Lock()
	g.fetchesBy[pid]++
	g.mu.Unlock()
}

// ownerLookups bounds the tries to find a fetch's process.
const ownerLookups = 20

// socketOwner returns the process holding the local end of the TCP
// connection from addr (an IPv4 address in this network namespace), while
// the connection is open.
func socketOwner(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return 0, fmt.Errorf("client address %q: not IPv4", addr)
	}
	// /proc/net/tcp writes the address as the hex of its 32-bit value in
	// host (little-endian) order, then the port in hex.
	ip := ap.Addr().As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	inode := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if fields := strings.Fields(sc.Text()); len(fields) > 9 && fields[1] == local {
			inode = fields[9]
			break
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if inode == "" || inode == "0" {
		return 0, fmt.Errorf("no socket at %s in /proc/net/tcp", addr)
	}
	want := "socket:[" + inode + "]"
	fds, err := filepath.Glob("/proc/[0-9]*/fd/*")
	if err != nil {
		return 0, err
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && link == want {
			// /proc/PID/fd/N
			return strconv.Atoi(strings.Split(fd, "/")[2])
		}
	}
	return 0, fmt.Errorf("no process holds %s (socket %s)", addr, inode)
}
