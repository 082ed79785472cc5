package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/gitwatch"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The store is the source of truth; the fleet is derived from it. Every
// change made through the admin API or found by the Git watcher is written
// to the store first and then reloaded into the fleet by the methods below,
// so the fleet never holds what the store does not.

// load fills the fleet from the store at start.
func (h *Hub) load(ctx context.Context) error {
	cls, err := h.store.ListAllClusters(ctx)
	if err != nil {
		return fmt.Errorf("load clusters: %w", err)
	}
	for _, c := range cls {
		if c.Revoked {
			continue
		}
		if err := h.fleet.SetCluster(c.Name, c.Labels); err != nil {
			h.log.Warn("cluster not loaded", "cluster", c.Name, "err", err)
		}
	}
	apps, err := h.store.ListApplications(ctx)
	if err != nil {
		return fmt.Errorf("load applications: %w", err)
	}
	rels, err := h.store.CurrentReleases(ctx)
	if err != nil {
		return fmt.Errorf("load releases: %w", err)
	}
	for _, a := range apps {
		h.setApp(ctx, a, rels[a.GetName()].GetCommit())
	}
	h.log.Info("fleet loaded", "clusters", len(cls), "applications", len(apps))
	return nil
}

// setApp puts an application into the fleet with its commit and its
// repository's credentials.
func (h *Hub) setApp(ctx context.Context, a *droverv1.Application, commit string) {
	creds, err := h.repoCredentials(ctx, a.GetSpec().GetSource().GetRepoUrl())
	if err != nil {
		h.log.Error("read repository credentials", "app", a.GetName(), "err", err)
	}
	if err := h.rollouts.setApp(&fleet.App{Name: a.GetName(), Spec: a.GetSpec(), Commit: commit, Credentials: creds}); err != nil {
		h.log.Error("place application", "app", a.GetName(), "err", err)
		return
	}
	h.mu.Lock()
	h.specs[a.GetName()] = a.GetSpec()
	h.mu.Unlock()
}

// repoCredentials returns the stored credentials of a repository, or nil.
func (h *Hub) repoCredentials(ctx context.Context, url string) (*droverv1.RepoCredentials, error) {
	sealed, _, err := h.store.GetRepositorySealed(ctx, url)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	plain, err := h.box.Open(sealed, []byte(url))
	if err != nil {
		return nil, fmt.Errorf("decrypt credentials of %s: %w", gitwatch.RedactURL(url), err)
	}
	var c droverv1.RepoCredentials
	if err := proto.Unmarshal(plain, &c); err != nil {
		return nil, fmt.Errorf("decode credentials of %s: %w", gitwatch.RedactURL(url), err)
	}
	return &c, nil
}

// ApplicationChanged reloads one application from the store.
func (h *Hub) ApplicationChanged(ctx context.Context, name string) {
	defer h.notify()
	a, err := h.store.GetApplication(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		h.rollouts.removeApp(name)
		h.mu.Lock()
		delete(h.specs, name)
		delete(h.sourceErrs, name)
		h.mu.Unlock()
		h.watcher.Changed()
		return
	}
	if err != nil {
		h.log.Error("reload application", "app", name, "err", err)
		return
	}
	rels, err := h.store.ListReleases(ctx, name, 1)
	if err != nil {
		h.log.Error("reload application", "app", name, "err", err)
		return
	}
	commit := ""
	if len(rels) > 0 {
		commit = rels[0].GetCommit()
	}
	h.setApp(ctx, a, commit)
	h.watcher.Changed()
	if commit == "" {
		// Resolve a new application's ref now rather than at the next poll.
		go func() {
			if _, _, err := h.Refresh(context.WithoutCancel(ctx), name); err != nil {
				h.log.Warn("resolve new application", "app", name, "err", err)
			}
		}()
	}
}

// ClusterChanged reloads one cluster from the store.
func (h *Hub) ClusterChanged(ctx context.Context, name string) {
	defer h.notify()
	c, err := h.store.GetCluster(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && c.GetRevoked()) {
		h.fleet.RemoveCluster(name)
		return
	}
	if err != nil {
		h.log.Error("reload cluster", "cluster", name, "err", err)
		return
	}
	if err := h.fleet.SetCluster(name, c.GetLabels()); err != nil {
		h.log.Error("place cluster", "cluster", name, "err", err)
	}
}

// RepositoryChanged reloads the applications of a repository, so their
// assignments carry its new credentials.
func (h *Hub) RepositoryChanged(ctx context.Context, url string) {
	want := gitwatch.NormalizeURL(url)
	h.mu.Lock()
	var names []string
	for name, spec := range h.specs {
		if gitwatch.NormalizeURL(spec.GetSource().GetRepoUrl()) == want {
			names = append(names, name)
		}
	}
	h.mu.Unlock()
	for _, n := range names {
		h.ApplicationChanged(ctx, n)
	}
	h.watcher.Trigger(url)
}

// Refresh resolves an application's ref now. The watcher reports the
// result to OnResolved like any poll; newRelease says whether it moved the
// application's release.
func (h *Hub) Refresh(ctx context.Context, app string) (string, bool, error) {
	before, err := h.store.ListReleases(ctx, app, 1)
	if err != nil {
		return "", false, err
	}
	commit, err := h.watcher.Refresh(ctx, app)
	if err != nil {
		return "", false, err
	}
	return commit, len(before) == 0 || before[0].GetCommit() != commit, nil
}

// Disconnect closes a cluster's stream on this replica.
func (h *Hub) Disconnect(cluster string, reason error) { h.agents.Disconnect(cluster, reason) }

// PlacedClusters lists the clusters an application is placed on.
func (h *Hub) PlacedClusters(app string) []string { return h.fleet.PlacedClusters(app) }

// AssignmentVersion is the version of a cluster's current assignment.
func (h *Hub) AssignmentVersion(cluster string) string {
	if a := h.fleet.Assignment(cluster); a != nil {
		return a.GetVersion()
	}
	return ""
}

// SourceError is the last error resolving an application's source.
func (h *Hub) SourceError(app string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sourceErrs[app]
}

// Targets lists every application's source for the Git watcher.
func (h *Hub) Targets() []gitwatch.Target {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]gitwatch.Target, 0, len(h.specs))
	for name, spec := range h.specs {
		src := spec.GetSource()
		// ValidateSpec accepted the interval when the spec was stored.
		interval, _ := time.ParseDuration(src.GetPollInterval())
		out = append(out, gitwatch.Target{App: name, RepoURL: src.GetRepoUrl(), Ref: src.GetRef(), Interval: interval})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out
}

// Credentials returns a repository's stored credentials for the Git
// watcher.
func (h *Hub) Credentials(ctx context.Context, url string) (gitwatch.Credentials, error) {
	c, err := h.repoCredentials(ctx, url)
	if err != nil || c == nil {
		return gitwatch.Credentials{}, err
	}
	return gitwatch.Credentials{Username: c.GetUsername(), Password: c.GetPassword(), SSHPrivateKey: c.GetSshPrivateKey(), SSHKnownHosts: c.GetSshKnownHosts()}, nil
}

// OnResolved records a resolved commit: a new one makes a new release.
func (h *Hub) OnResolved(ctx context.Context, app, ref, commit string) {
	if _, err := h.newCommit(ctx, app, commit); err != nil {
		h.log.Error("record release", "app", app, "commit", commit, "err", err)
	}
}

func (h *Hub) newCommit(ctx context.Context, app, commit string) (bool, error) {
	h.mu.Lock()
	spec, known := h.specs[app]
	hadErr := h.sourceErrs[app] != ""
	delete(h.sourceErrs, app)
	h.mu.Unlock()
	if !known {
		return false, nil // deleted meanwhile
	}
	if hadErr {
		h.event(ctx, "application.source_recovered", app, "the source resolves again")
	}
	managed := h.rollouts.manages(app)
	from, noop := "", false
	if managed {
		from = h.rollouts.release(app)
		noop = h.unchanged(ctx, app, spec.GetSource(), from, commit)
		if noop {
			// Before the release is stored, so the engine never sees the
			// release's noop flag without the release it holds against.
			h.rollouts.noop(app, commit, from)
		}
	}
	created, err := h.store.AddRelease(ctx, app, commit, spec.GetSource().GetRef(), noop, time.Now())
	if err != nil {
		return false, err
	}
	if created {
		h.log.Info("new release", "app", app, "commit", commit, "noop", noop)
		msg := "new release at commit " + commit
		if noop {
			msg += ": nothing changed under the application's paths, so every cluster moves to it at once"
		}
		h.event(ctx, "release.created", app, msg)
	}
	if managed {
		// The rollout engine moves the release across the clusters.
		h.rollouts.poke()
		return created, nil
	}
	if err := h.fleet.SetCommit(app, commit); err != nil && !errors.Is(err, fleet.ErrNotFound) {
		return created, err
	}
	return created, nil
}

// unchanged reports whether commit changes nothing under the paths of
// src since from, the release of the application's rollout: such a
// release needs no rollout. Any doubt (no rollout yet, a fetch that
// fails) means changed, which costs only a rollout.
func (h *Hub) unchanged(ctx context.Context, app string, src *droverv1.Source, from, commit string) bool {
	if from == "" || from == commit {
		return false
	}
	creds, err := h.Credentials(ctx, src.GetRepoUrl())
	if err != nil {
		h.log.Warn("compare releases: read repository credentials", "app", app, "err", err)
		return false
	}
	paths := append([]string{src.GetPath()}, src.GetExtraPaths()...)
	changed, err := h.resolver.PathsChanged(ctx, src.GetRepoUrl(), creds, from, commit, paths)
	if err != nil {
		h.log.Warn("compare releases", "app", app, "commit", commit, "from", from, "err", err)
		return false
	}
	return !changed
}

// OnError records that an application's source could not be resolved.
func (h *Hub) OnError(ctx context.Context, app string, err error) {
	msg := err.Error()
	h.mu.Lock()
	_, known := h.specs[app]
	prev := h.sourceErrs[app]
	if known {
		h.sourceErrs[app] = msg
	}
	h.mu.Unlock()
	if known && prev != msg {
		h.log.Warn("application source unresolved", "app", app, "err", msg)
		h.event(ctx, "application.source_failed", app, msg)
	}
}

func (h *Hub) event(ctx context.Context, kind, app, msg string) {
	if err := h.store.AddEvent(context.WithoutCancel(ctx), &droverv1.Event{
		Time: timestamppb.Now(), Kind: kind, Actor: "hub", Application: app, Message: msg,
	}); err != nil {
		h.log.Warn("record event", "kind", kind, "err", err)
	}
	h.notify()
}
