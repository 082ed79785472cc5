package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/drover-dev/drover/hub/store"
)

var _ store.ChangeHandler = (*Controller)(nil)

// Changed reloads into the fleet what other replicas changed in the store
// (a store.Listener's handler). Work those replicas did once for all (marking
// statuses, resolving a new application's ref) is not done again. Calls
// must not overlap; a Listener makes them one at a time.
func (c *Controller) Changed(ctx context.Context, changes []store.Change) {
	signal := false
	for _, ch := range changes {
		switch ch.Kind {
		case store.ChangeApp, store.ChangeRelease:
			c.reload(ctx, ch.Name, false)
		case store.ChangeCluster:
			c.clusterChanged(ctx, ch.Name, false)
		case store.ChangeRepo:
			c.repositoryChanged(ctx, ch.Name, false)
		case store.ChangeRollout:
			if err := c.rollouts.reloadState(ctx, ch.Name); err != nil {
				c.log.Error("reload rollout", "app", ch.Name, "err", err)
			}
		case store.ChangeStatuses, store.ChangeAgents, store.ChangeEvents:
			signal = true
		default:
			// A kind this version does not know of: read everything.
			c.Resync(ctx)
			return
		}
	}
	if signal {
		c.notify()
	}
}

// Resync brings the fleet to what the store holds, after changes may have
// been missed: every cluster and application is set again (the fleet
// recomputes only what differs), those gone from the store are removed,
// and every rollout this replica does not own is read again. Failures are
// logged; the next resync or change catches up.
func (c *Controller) Resync(ctx context.Context) {
	defer c.notify()
	clusters, apps, err := c.sync(ctx)
	if err != nil {
		c.log.Error("resync the fleet with the store", "err", err)
		return
	}
	c.log.Info("fleet resynced with the store", "clusters", clusters, "applications", apps)
}

// sync sets every cluster, application and rollout state the store holds
// into the fleet and removes what it no longer holds: the fleet recomputes
// only what differs. It returns how many clusters and applications the
// fleet holds.
func (c *Controller) sync(ctx context.Context) (clusters, apps int, err error) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	cls, err := c.store.ListAllClusters(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("load clusters: %w", err)
	}
	stored, err := c.store.ListApplications(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("load applications: %w", err)
	}
	rels, err := c.store.CurrentReleases(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("load releases: %w", err)
	}
	// Before the applications, so that each is set with its pins once.
	if err := c.rollouts.reloadStates(ctx); err != nil {
		return 0, 0, err
	}

	live := make(map[string]bool, len(cls))
	for _, cl := range cls {
		if cl.Revoked {
			continue
		}
		live[cl.Name] = true
		if err := c.fleet.SetCluster(cl.Name, cl.Labels); err != nil {
			c.log.Warn("cluster not loaded", "cluster", cl.Name, "err", err)
		}
	}
	for _, cl := range c.fleet.Clusters() {
		if !live[cl.Name] {
			c.fleet.RemoveCluster(cl.Name)
		}
	}

	names := make(map[string]bool, len(stored))
	for _, a := range stored {
		names[a.GetName()] = true
		c.setApp(ctx, a, rels[a.GetName()].GetContentCommit())
	}
	c.mu.Lock()
	var gone []string
	for name := range c.specs {
		if !names[name] {
			gone = append(gone, name)
		}
	}
	c.mu.Unlock()
	for _, name := range gone {
		c.removeApp(name)
	}
	return len(live), len(stored), nil
}

// reloadState reads an application's rollout from the store into the
// engine and the fleet's pins: another replica stepped it, an operator
// commanded it through any replica, or it was deleted. A state older than
// the engine's (the owner's own write, read back) is left alone.
func (e *rollouts) reloadState(ctx context.Context, name string) error {
	r, err := e.store.GetRollout(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		e.mu.Lock()
		e.forgetLocked(name)
		e.mu.Unlock()
		e.changed()
		return nil
	}
	if err != nil {
		return err
	}
	e.adopt(name, r)
	return nil
}

// reloadStates is reloadState for every application, in one read.
func (e *rollouts) reloadStates(ctx context.Context) error {
	stored, err := e.store.ListRollouts(ctx)
	if err != nil {
		return fmt.Errorf("load rollouts: %w", err)
	}
	e.mu.Lock()
	for _, name := range slices.Collect(maps.Keys(e.states)) {
		if _, ok := stored[name]; !ok {
			e.forgetLocked(name)
		}
	}
	e.mu.Unlock()
	for name, r := range stored {
		e.adopt(name, r)
	}
	return nil
}

// forgetLocked drops an application's rollout state, gone from the store,
// and its pins.
func (e *rollouts) forgetLocked(name string) {
	if _, had := e.states[name]; !had {
		return
	}
	delete(e.states, name)
	delete(e.versions, name)
	if a := e.apps[name]; a != nil {
		if err := e.fleet.SetApp(a.App); err != nil {
			e.log.Error("place application", "app", name, "err", err)
		}
	}
}
