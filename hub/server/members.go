package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/drover-dev/drover/hub/replicas"
	"github.com/drover-dev/drover/internal/atomicfile"
	"github.com/drover-dev/drover/internal/backoff"
	"github.com/drover-dev/drover/internal/version"
)

// startMembership claims the replica name and joins the other replicas.
func (h *Hub) startMembership(ctx context.Context) error {
	key, err := h.cfg.gossipKey()
	if err != nil {
		return err // Validate saw it already; the file may have changed since
	}
	nodeID, err := loadOrCreateNodeID(filepath.Join(h.cfg.DataDir, "replica-id"))
	if err != nil {
		return err
	}
	h.members, err = replicas.Start(ctx, replicas.Config{
		Name: h.cfg.Replica, AgentAddr: h.agentLis.Addr().String(), HTTPAddr: h.httpLis.Addr().String(), Version: version.Version,
		NodeID: nodeID, PeerAddr: h.cfg.PeerAddr, Peers: h.cfg.Peers, GossipKey: key,
		Store: h.store, Logger: h.log,
	})
	if err != nil {
		return fmt.Errorf("hub replicas: %w", err)
	}
	return nil
}

// runMembership publishes this replica's agent stream count to the others
// and tells open dashboard pages when the replicas it sees change, until
// ctx ends, and fails when this process lost its replica name: then
// another process runs as this replica, and this one must stop.
func (h *Hub) runMembership(ctx context.Context) error {
	const loadInterval = 2 * time.Second
	var seen []string
	for {
		h.members.SetLoad(h.agents.Connected())
		// Polled rather than read from Members' Changes, whose one
		// reader is the job keeper.
		if now := h.members.Members(); !slices.Equal(now, seen) {
			seen = now
			h.changes.Notify()
		}
		t := time.NewTimer(backoff.Jitter(loadInterval, 0.1))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-h.members.Lost():
			t.Stop()
			return h.members.Err()
		case <-t.C:
		}
	}
}

// loadOrCreateNodeID reads the replica's node id from path, creating a
// random one on first start. It stays with the data directory, so a
// replica restarted after a crash is known for itself and takes its name
// back at once.
func loadOrCreateNodeID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("replica id: %w", err)
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:]) // never fails
	id := hex.EncodeToString(raw[:])
	if err := atomicfile.Write(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("replica id: %w", err)
	}
	return id, nil
}
