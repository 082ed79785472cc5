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

// Restart starts a stopped or killed agent again with the same state
// directory and flags, as Start does, and waits until it runs. When one
// of ports (addresses it listens on, such as its --metrics-addr) was taken
// while it was down, Restart waits until it is free and retries.
func (a *AgentProcess) Restart(t testing.TB, ports ...string) {
	t.Helper()
	if p := a.Process(); p != nil && !p.Exited() {
		t.Fatalf("testbed: drover-agent %s (pid %d) still runs: stop or kill it first", a.Name, p.Pid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), droverStartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		p, err := a.run()
		if err != nil {
			t.Fatalf("testbed: %v", err)
		}
		// daemon.Start logs this once registered and resumed.
		err = waitUntil(ctx, "drover-agent "+a.Name+" to start", []*Process{p}, func(context.Context) (bool, error) {
			return p.LogContains("agent started"), nil
		})
		if err == nil {
			return
		}
		if !p.bindFailed() || len(ports) == 0 || attempt == hubStartAttempts {
			t.Fatalf("testbed: restart: %v", err)
		}
		t.Logf("testbed: a port of drover-agent %s (%s) was taken while it was down; waiting for it to be free", a.Name, strings.Join(ports, ", "))
		err = waitUntil(ctx, "the ports "+strings.Join(ports, ", ")+" free", nil, func(context.Context) (bool, error) {
			return portsFree(ports...)
		})
		if err != nil {
			t.Fatalf("testbed: restart: %v", err)
		}
	}
}
