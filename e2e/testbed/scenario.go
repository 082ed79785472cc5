package testbed

import (
	"context"
	"net"
	"strings"
	"testing"
)

// Restart starts a stopped or killed hub again with the same data
// directory, addresses and flags, as Start does, and waits until it
// serves. Agents know the hub by its address, so its ports cannot change;
// when another process took one of them while the hub was down (ports
// chosen free are in the range the kernel also hands out to outgoing
// connections), Restart waits until the port is free again and retries.
func (h *HubProcess) Restart(t testing.TB) {
	t.Helper()
	if p := h.Process(); p != nil && !p.Exited() {
		t.Fatalf("testbed: drover-hub (pid %d) still runs: stop or kill it first", p.Pid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), droverStartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		err := h.start()
		if err == nil {
			return
		}
		p := h.Process()
		if p == nil || !p.bindFailed() || attempt == hubStartAttempts {
			t.Fatalf("testbed: restart: %v", err)
		}
		addrs := []string{h.AgentAddr, h.HTTPAddr}
		t.Logf("testbed: a port of drover-hub (%s) was taken while it was down; waiting for it to be free", strings.Join(addrs, ", "))
		err = waitUntil(ctx, "the ports "+strings.Join(addrs, ", ")+" free", nil, func(context.Context) (bool, error) {
			return portsFree(addrs...)
		})
		if err != nil {
			t.Fatalf("testbed: restart: %v", err)
		}
	}
}

// portsFree reports whether every addr can be listened on now.
func portsFree(addrs ...string) (bool, error) {
	for _, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false, err
		}
		l.Close()
	}
	return true, nil
}
