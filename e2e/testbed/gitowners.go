package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Who fetched.
//
// The hub and the agents fetch from the same repository URL with the
// same Git client, so nothing in a request says which program sent it. A
// test that counts one program's fetches (an agent's, not the hub's
// compares) has the server find the process that holds the client's end
// of each fetch's connection: the connection is on loopback, so the kernel
// knows its socket in this network namespace (sock_diag gives its inode),
// and the process holding it has the socket's inode among its open files.

// WithFetchOwners makes the server record which process made each fetch
// (a POST to git-upload-pack, which carries a fetch's wants and sends its
// pack), for FetchesBy. Linux only; it asks the kernel and reads /proc at
// every fetch.
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
	pid, err := fetchOwner(r)
	if err != nil {
		pid = 0
	}
	g.mu.Lock()
	g.fetchesBy[pid]++
	g.mu.Unlock()
}

// fetchOwner returns the process holding the client's end of the
// request's connection, which stays open while it waits for the response.
func fetchOwner(r *http.Request) (int, error) {
	client, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || !client.Addr().Is4() {
		return 0, fmt.Errorf("client address %q: not IPv4", r.RemoteAddr)
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return 0, errors.New("no local address in the request's context")
	}
	server, err := netip.ParseAddrPort(local.String())
	if err != nil || !server.Addr().Is4() {
		return 0, fmt.Errorf("server address %q: not IPv4", local)
	}
	inode, err := socketInode(client, server)
	if err != nil {
		return 0, err
	}
	return inodeOwner(inode)
}

// socketInode asks the kernel (sock_diag over netlink) for the inode of
// the TCP socket from client to server in this network namespace. One
// exact lookup by the connection's addresses: unlike /proc/net/tcp, read a
// page at a time, it cannot miss a socket while others come and go.
func socketInode(client, server netip.AddrPort) (uint32, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	// struct nlmsghdr (16 bytes), then struct inet_diag_req_v2 (56):
	// family, protocol, extensions, pad, states, then the socket's id
	// (sport, dport, src[4], dst[4], interface, cookie[2]).
	const hdr, reqLen = 16, 56
	req := make([]byte, hdr+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	b := req[hdr:]
	b[0], b[1] = unix.AF_INET, unix.IPPROTO_TCP
	ne.PutUint32(b[4:], 0xffffffff) // every state
	id := b[8:]
	binary.BigEndian.PutUint16(id[0:], client.Port())
	binary.BigEndian.PutUint16(id[2:], server.Port())
	src, dst := client.Addr().As4(), server.Addr().As4()
	copy(id[4:], src[:])
	copy(id[20:], dst[:])
	ne.PutUint32(id[40:], 0xffffffff) // no cookie: look it up by addresses
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	resp := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, resp, 0)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	if n < hdr+4 {
		return 0, fmt.Errorf("sock_diag: short answer of %d bytes", n)
	}
	switch ne.Uint16(resp[4:]) {
	case unix.NLMSG_ERROR:
		errno := -int32(ne.Uint32(resp[hdr:]))
		return 0, fmt.Errorf("sock_diag: no socket from %s to %s: %w", client, server, unix.Errno(errno))
	case unix.SOCK_DIAG_BY_FAMILY:
		// struct inet_diag_msg: family, state, timer, retrans, the id
		// (48 bytes), expires, rqueue, wqueue, uid, then the inode.
		const inodeAt = hdr + 4 + 48 + 16
		if n < inodeAt+4 {
			return 0, fmt.Errorf("sock_diag: short answer of %d bytes", n)
		}
		return ne.Uint32(resp[inodeAt:]), nil
	}
	return 0, fmt.Errorf("sock_diag: unexpected answer type %d", ne.Uint16(resp[4:]))
}

// inodeOwner returns the process that has the socket inode among its open
// files.
func inodeOwner(inode uint32) (int, error) {
	if inode == 0 {
		return 0, errors.New("socket has no inode")
	}
	want := fmt.Sprintf("socket:[%d]", inode)
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
	return 0, fmt.Errorf("no process holds socket %d", inode)
}
