// Package control is the hub's control logic: it decides what the
// in-memory fleet (hub/fleet) holds, and is its only writer. Applications,
// clusters and repositories changed through the admin API, clusters that
// register through the agent endpoint, commits the Git watcher resolves
// and the steps of every rollout all reach the fleet through one
// Controller. It creates releases (a commit that changes nothing under an
// application's paths is a no-op release: its clusters keep the content
// commit they have, so none moves and no agent fetches), keeps each
// application's last
// source error, and runs the rollout engine that moves releases across
// the clusters in waves.
//
// The store is the source of truth and the fleet is derived from it: every
// change is written to the store first and then reloaded into the fleet, so
// the fleet never holds what the store does not.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/agentapi"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/gitwatch"
	"github.com/drover-dev/drover/hub/ownership"
	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Opener decrypts the repository credentials the admin API sealed.
type Opener interface {
	Open(sealed, associatedData []byte) ([]byte, error)
}

// Config is what a Controller works with. Store, Fleet, Secrets and
// Resolver are required.
type Config struct {
	Store *store.Store
	// Fleet is the in-memory fleet the Controller fills and keeps; nothing
	// else may write it.
	Fleet   *fleet.Fleet
	Secrets Opener
	// Resolver resolves refs and compares commits for the Git watcher
	// the Controller runs.
	Resolver *gitwatch.Resolver
	// PollInterval is how often Git refs are resolved by default; 0 means
	// the Git watcher's default.
	PollInterval time.Duration
	// OfflineTimeout is the hub's online window: a cluster silent for
	// longer is offline to rollouts.
	OfflineTimeout time.Duration
	// EventRetention is how long events are kept; 0 keeps them forever.
	EventRetention time.Duration
	// Owner says which background jobs (rollouts, repositories to poll)
	// this replica holds the leases of. Nil: the Controller keeps the
	// leases itself, as a replica alone named Replica.
	Owner Owner
	// Replica names this hub replica when the Controller keeps its own
	// leases.
	Replica string
	// Changed, when set, is told that something an operator sees changed
	// (an event recorded, an application or a rollout changed): the
	// dashboard's notifier. It must not block.
	Changed func()
	Logger  *slog.Logger
}

// Owner is what the Controller needs of ownership.Keeper: the jobs there
// are, the leases held, and when they change.
type Owner interface {
	SetJobs(jobs []string)
	Lease(job string) (store.Lease, bool)
	Changes() <-chan struct{}
}

// Controller is the hub's control logic and the fleet's only writer. Its
// methods may be called from any goroutine.
type Controller struct {
	store    *store.Store
	fleet    *fleet.Fleet
	box      Opener
	resolver *gitwatch.Resolver
	watcher  *gitwatch.Watcher
	rollouts *rollouts
	owner    Owner
	// retention is Config.EventRetention.
	retention time.Duration
	// keeper is the Controller's own lease keeper when Config.Owner was
	// nil; Run runs it.
	keeper  *ownership.Keeper
	changed func()
	log     *slog.Logger

	// syncMu serialises each read of the store with its writes into the
	// fleet, so that nothing read earlier lands after something read
	// later: a resync, which also removes what its read did not find,
	// would otherwise undo a cluster registered meanwhile, and an older
	// release could overwrite a newer one. Lock order: syncMu, then
	// removingMu, then the engine's and the fleet's.
	syncMu sync.Mutex
	// removingMu serialises markRemoving, so that marks computed from an
	// older fleet never overwrite those of a newer one.
	removingMu sync.Mutex

	mu sync.Mutex // guards the fields below
	// sourceErrs holds the last error resolving each application's
	// source, as this replica knows it stored ("" when it resolves); an
	// application absent has not been resolved here yet.
	sourceErrs map[string]string
	// specs caches application specs for the Git watcher's Targets.
	specs map[string]*droverv1.ApplicationSpec
}

var (
	_ adminapi.Controller        = (*Controller)(nil)
	_ adminapi.RolloutController = (*Controller)(nil)
	_ agentapi.Controller        = (*Controller)(nil)
	_ gitwatch.Source            = (*Controller)(nil)
	_ gitwatch.Sink              = (*Controller)(nil)
	_ gitwatch.RepoOwner         = (*Controller)(nil)
)

// New loads the store into a new fleet: every cluster, every application
// at its current release, and every rollout where it stood, so the hub
// resumes each rollout where it was. Run must run for releases and
// rollouts to move.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Fleet == nil || cfg.Secrets == nil || cfg.Resolver == nil {
		return nil, errors.New("control: Store, Fleet, Secrets and Resolver are required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	changed := cfg.Changed
	if changed == nil {
		changed = func() {}
	}
	c := &Controller{
		store: cfg.Store, fleet: cfg.Fleet, box: cfg.Secrets, resolver: cfg.Resolver,
		owner: cfg.Owner, retention: cfg.EventRetention, changed: changed, log: logger,
		sourceErrs: map[string]string{}, specs: map[string]*droverv1.ApplicationSpec{},
	}
	if c.owner == nil {
		replica := cfg.Replica
		if replica == "" {
			replica = "hub"
		}
		c.keeper = ownership.New(ownership.Config{
			Holder: store.Holder{Replica: replica, Instance: store.NewInstanceID()},
			Store:  cfg.Store, Logger: logger,
		})
		c.owner = c.keeper
	}
	c.rollouts = newRollouts(cfg.Store, cfg.Fleet, c.owner, cfg.OfflineTimeout, changed, logger)
	if err := c.load(ctx); err != nil {
		return nil, err
	}
	c.updateJobs()
	var err error
	if c.watcher, err = gitwatch.NewWatcher(gitwatch.Config{Interval: cfg.PollInterval, Logger: logger}, cfg.Resolver, c, c); err != nil {
		return nil, err
	}
	return c, nil
}

// Run polls Git and steps rollouts until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if c.keeper != nil {
		g.Go(func() error { return c.keeper.Run(ctx) })
	}
	g.Go(func() error { return c.watcher.Run(ctx) })
	g.Go(func() error { return c.rollouts.run(ctx) })
	prune := time.NewTicker(pruneInterval)
	defer prune.Stop()
	g.Go(func() error {
		// Jobs gained or lost: the watcher polls what is this replica's
		// now, the engine steps the rollouts it holds, and a replica that
		// gains the retention job prunes at once.
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-c.owner.Changes():
				c.watcher.Changed()
				c.rollouts.poke()
				c.pruneEvents(ctx)
			case <-prune.C:
				c.pruneEvents(ctx)
			}
		}
	})
	return g.Wait()
}

// pruneInterval is how often the holder of the retention job deletes
// events older than the retention.
const pruneInterval = 10 * time.Minute

// retentionJob is the job of deleting old events.
const retentionJob = "retention"

// pruneEvents deletes events older than the retention, in batches so that
// no transaction holds many rows, while this replica holds the job.
func (c *Controller) pruneEvents(ctx context.Context) {
	if c.retention <= 0 {
		return
	}
	const batch = 5000
	var total int64
	for ctx.Err() == nil {
		lease, ok := c.owner.Lease(retentionJob)
		if !ok {
			break
		}
		n, err := c.store.PruneEvents(ctx, lease, time.Now().Add(-c.retention), batch)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("delete old events", "err", err)
			}
			break
		}
		total += n
		if n < batch {
			break
		}
	}
	if total > 0 {
		c.log.Info("old events deleted", "events", total, "retention", c.retention)
	}
}

// updateJobs tells the owner which jobs there are: every application's
// repository to poll, every application's rollout (the engine steps those
// with a strategy, and forgets the rollout of one whose strategy was
// removed), and event retention.
func (c *Controller) updateJobs() {
	c.mu.Lock()
	jobs := make([]string, 0, 2*len(c.specs)+1)
	for name, spec := range c.specs {
		jobs = append(jobs, ownership.GitJob(gitwatch.NormalizeURL(spec.GetSource().GetRepoUrl())), ownership.RolloutJob(name))
	}
	if c.retention > 0 {
		jobs = append(jobs, retentionJob)
	}
	c.mu.Unlock()
	c.owner.SetJobs(jobs)
}

// PollsRepo reports whether this replica polls a repository on schedule:
// it holds the lease of its polling.
func (c *Controller) PollsRepo(key string) bool {
	_, ok := c.owner.Lease(ownership.GitJob(key))
	return ok
}

// Poke says that what rollouts observe changed (a status written, an ACK
// or NACK, a connection): the rollout engine steps at once rather than at
// its next tick. It never blocks, and pokes coalesce.
func (c *Controller) Poke() { c.rollouts.poke() }

// notify pokes the engine and tells the dashboard.
func (c *Controller) notify() {
	c.rollouts.poke()
	c.changed()
}

// load fills the fleet from the store at start.
func (c *Controller) load(ctx context.Context) error {
	clusters, apps, err := c.sync(ctx)
	if err != nil {
		return err
	}
	// A hub that stopped between a placement change and its marks, or an
	// older hub that made none, left them behind the fleet.
	names := make([]string, 0, clusters)
	for _, cl := range c.fleet.Clusters() {
		names = append(names, cl.Name)
	}
	c.markRemoving(ctx, names...)
	c.log.Info("fleet loaded", "clusters", clusters, "applications", apps)
	return nil
}

// markRemoving makes the removing mark of the clusters' statuses follow
// their assignments as the fleet holds them now. A status of an
// application that left a cluster's assignment stays, marked removing,
// until the cluster's agent confirms it removed the application (agentapi
// deletes it then); meanwhile the hub shows it as being removed and counts
// it nowhere. Placed there again, the application's status is current
// once more, and the mark goes.
//
// A failure is logged: the marks catch up at the next change of the same
// cluster or application, or at the hub's next start.
func (c *Controller) markRemoving(ctx context.Context, clusters ...string) {
	if len(clusters) == 0 {
		return
	}
	c.removingMu.Lock()
	defer c.removingMu.Unlock()
	assigned := make(map[string][]string, len(clusters))
	for _, name := range clusters {
		a := c.fleet.Assignment(name)
		if a == nil {
			// Deleted: its statuses went with it. Revoked: its agent will
			// not confirm anything.
			continue
		}
		apps := make([]string, len(a.GetApplications()))
		for i, aa := range a.GetApplications() {
			apps[i] = aa.GetName()
		}
		assigned[name] = apps
	}
	n, err := c.store.MarkRemoving(context.WithoutCancel(ctx), assigned)
	if err != nil {
		c.log.Error("mark statuses of removed applications", "clusters", len(assigned), "err", err)
		return
	}
	if n > 0 {
		c.log.Info("statuses marked for removal or current again", "clusters", len(assigned), "statuses", n)
		c.changed()
	}
}

// setApp puts an application into the fleet with its commit and its
// repository's credentials.
func (c *Controller) setApp(ctx context.Context, a *droverv1.Application, commit string) {
	creds, err := c.repoCredentials(ctx, a.GetSpec().GetSource().GetRepoUrl())
	if err != nil {
		c.log.Error("read repository credentials", "app", a.GetName(), "err", err)
	}
	if err := c.rollouts.setApp(&fleet.App{Name: a.GetName(), Spec: a.GetSpec(), Commit: commit, Credentials: creds}); err != nil {
		c.log.Error("place application", "app", a.GetName(), "err", err)
		return
	}
	c.mu.Lock()
	c.specs[a.GetName()] = a.GetSpec()
	c.mu.Unlock()
	c.updateJobs()
}

// symmetricDifference returns the names in a or b but not in both.
func symmetricDifference(a, b []string) []string {
	count := make(map[string]int, len(a)+len(b))
	for _, n := range slices.Concat(a, b) {
		count[n]++
	}
	var out []string
	for n, k := range count {
		if k == 1 {
			out = append(out, n)
		}
	}
	return out
}

// repoCredentials returns the stored credentials of a repository, or nil.
func (c *Controller) repoCredentials(ctx context.Context, url string) (*droverv1.RepoCredentials, error) {
	sealed, _, err := c.store.GetRepositorySealed(ctx, url)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	plain, err := c.box.Open(sealed, []byte(url))
	if err != nil {
		return nil, fmt.Errorf("decrypt credentials of %s: %w", gitwatch.RedactURL(url), err)
	}
	var creds droverv1.RepoCredentials
	if err := proto.Unmarshal(plain, &creds); err != nil {
		return nil, fmt.Errorf("decode credentials of %s: %w", gitwatch.RedactURL(url), err)
	}
	return &creds, nil
}

// ApplicationStored puts an application the admin API has just stored
// into the fleet, at its current release. app is the stored application,
// so it is not read again; the Controller keeps it and it must not change.
func (c *Controller) ApplicationStored(ctx context.Context, app *droverv1.Application) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.applicationStoredLocked(ctx, app, true)
}

// applicationStoredLocked puts a stored application into the fleet. local says
// that this replica stored it: then it also does what is done once for
// every replica, marking the statuses of the clusters the application
// left or reached and resolving a new application's ref.
func (c *Controller) applicationStoredLocked(ctx context.Context, app *droverv1.Application, local bool) {
	defer c.notify()
	rels, err := c.store.ListReleases(ctx, app.GetName(), 1)
	if err != nil {
		c.log.Error("reload application", "app", app.GetName(), "err", err)
		return
	}
	commit := ""
	if len(rels) > 0 {
		commit = rels[0].GetContentCommit()
	}
	// Only the clusters it leaves (a new selector or cluster list) and
	// those it reaches have statuses to mark. A change racing this one
	// may hide a cluster from the difference; its marks catch up at that
	// cluster's next change or the hub's next start.
	before := c.fleet.PlacedClusters(app.GetName())
	c.setApp(ctx, app, commit)
	c.watcher.Changed()
	if !local {
		return
	}
	c.markRemoving(ctx, symmetricDifference(before, c.fleet.PlacedClusters(app.GetName()))...)
	if commit == "" {
		// Resolve a new application's ref now rather than at the next poll.
		go func() {
			if _, _, err := c.Refresh(context.WithoutCancel(ctx), app.GetName()); err != nil {
				c.log.Warn("resolve new application", "app", app.GetName(), "err", err)
			}
		}()
	}
}

// ApplicationDeleted takes an application the admin API has deleted out
// of the fleet.
func (c *Controller) ApplicationDeleted(ctx context.Context, name string) {
	defer c.notify()
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.removeApp(name)
}

func (c *Controller) removeApp(name string) {
	c.rollouts.removeApp(name)
	c.mu.Lock()
	delete(c.specs, name)
	delete(c.sourceErrs, name)
	c.mu.Unlock()
	c.updateJobs()
	c.watcher.Changed()
}

// reload reads one application from the store into the fleet; local as
// for applicationStoredLocked.
func (c *Controller) reload(ctx context.Context, name string, local bool) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	a, err := c.store.GetApplication(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		c.removeApp(name)
		c.notify()
		return
	}
	if err != nil {
		c.log.Error("reload application", "app", name, "err", err)
		return
	}
	c.applicationStoredLocked(ctx, a, local)
}

// ClusterChanged reloads one cluster from the store.
func (c *Controller) ClusterChanged(ctx context.Context, name string) {
	c.clusterChanged(ctx, name, true)
}

// clusterChanged reloads one cluster from the store; local (this replica
// changed it) also marks its statuses, which is done once for every
// replica.
func (c *Controller) clusterChanged(ctx context.Context, name string, local bool) {
	defer c.notify()
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	cl, err := c.store.GetCluster(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && cl.GetRevoked()) {
		c.fleet.RemoveCluster(name)
		return
	}
	if err != nil {
		c.log.Error("reload cluster", "cluster", name, "err", err)
		return
	}
	if err := c.fleet.SetCluster(name, cl.GetLabels()); err != nil {
		c.log.Error("place cluster", "cluster", name, "err", err)
		return
	}
	if local {
		c.markRemoving(ctx, name)
	}
}

// RepositoryChanged reloads the applications of a repository, so their
// assignments carry its new credentials.
func (c *Controller) RepositoryChanged(ctx context.Context, url string) {
	c.repositoryChanged(ctx, url, true)
}

func (c *Controller) repositoryChanged(ctx context.Context, url string, local bool) {
	want := gitwatch.NormalizeURL(url)
	c.mu.Lock()
	var names []string
	for name, spec := range c.specs {
		if gitwatch.NormalizeURL(spec.GetSource().GetRepoUrl()) == want {
			names = append(names, name)
		}
	}
	c.mu.Unlock()
	for _, n := range names {
		c.reload(ctx, n, local)
	}
	c.watcher.Trigger(url)
}

// Refresh resolves an application's ref now. The watcher reports the
// result to OnResolved like any poll; newRelease says whether it moved the
// application's release.
func (c *Controller) Refresh(ctx context.Context, app string) (string, bool, error) {
	before, err := c.store.ListReleases(ctx, app, 1)
	if err != nil {
		return "", false, err
	}
	commit, err := c.watcher.Refresh(ctx, app)
	if err != nil {
		return "", false, err
	}
	return commit, len(before) == 0 || before[0].GetCommit() != commit, nil
}

// PlacedClusters lists the clusters an application is placed on.
func (c *Controller) PlacedClusters(app string) []string { return c.fleet.PlacedClusters(app) }

// Preview returns an application's part of a cluster's assignment.
func (c *Controller) Preview(app, cluster, commit string) (*droverv1.AppAssignment, error) {
	return c.fleet.Preview(app, cluster, commit)
}

// AssignmentVersion is the version of a cluster's current assignment.
func (c *Controller) AssignmentVersion(cluster string) string {
	if a := c.fleet.Assignment(cluster); a != nil {
		return a.GetVersion()
	}
	return ""
}

// SourceError is the last error resolving an application's source.
func (c *Controller) SourceError(app string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sourceErrs[app]
}

// Targets lists every application's source for the Git watcher.
func (c *Controller) Targets() []gitwatch.Target {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]gitwatch.Target, 0, len(c.specs))
	for name, as := range c.specs {
		src := as.GetSource()
		// ValidateSpec accepted the interval when the spec was stored.
		interval, _ := time.ParseDuration(src.GetPollInterval())
		out = append(out, gitwatch.Target{
			App: name, RepoURL: src.GetRepoUrl(), Ref: src.GetRef(), Interval: interval,
			SourceType: spec.SourceType(src), Chart: src.GetChart(), Version: src.GetVersion(), Insecure: src.GetInsecure(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out
}

// Credentials returns a repository's stored credentials (and CA bundle)
// for the watcher.
func (c *Controller) Credentials(ctx context.Context, url string) (gitwatch.Access, error) {
	creds, err := c.repoCredentials(ctx, url)
	if err != nil || creds == nil {
		return gitwatch.Access{}, err
	}
	return gitwatch.Access{
		Credentials: gitwatch.Credentials{Username: creds.GetUsername(), Password: creds.GetPassword(), SSHPrivateKey: creds.GetSshPrivateKey(), SSHKnownHosts: creds.GetSshKnownHosts()},
		CAPEM:       []byte(creds.GetCaPem()),
	}, nil
}

// OnResolved records a resolved commit: a new one makes a new release.
func (c *Controller) OnResolved(ctx context.Context, app, ref, commit string) {
	if _, err := c.newCommit(ctx, app, commit); err != nil {
		c.log.Error("record release", "app", app, "commit", commit, "err", err)
	}
}

func (c *Controller) newCommit(ctx context.Context, app, commit string) (bool, error) {
	c.mu.Lock()
	spec, known := c.specs[app]
	c.mu.Unlock()
	if !known {
		return false, nil // deleted meanwhile
	}
	c.recordSourceError(ctx, app, "", "application.source_recovered", "the source resolves again")
	content, err := c.content(ctx, app, spec.GetSource(), commit)
	if err != nil {
		return false, err
	}
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	// What the commit was resolved from: a Git ref, or a Helm or OCI
	// version constraint.
	from := spec.GetSource().GetRef()
	if isArtifact(spec.GetSource()) {
		from = spec.GetSource().GetVersion()
	}
	created, err := c.store.AddRelease(ctx, app, commit, from, content, time.Now())
	if err != nil {
		return false, err
	}
	if created {
		c.log.Info("new release", "app", app, "commit", commit, "content", content)
		msg := "new release at commit " + commit
		if content != commit {
			msg += fmt.Sprintf(": nothing changed under the application's paths since %s, so the clusters keep its content and no cluster moves", content)
		}
		c.event(ctx, "release.created", app, msg)
	}
	if c.rollouts.manages(app) {
		// The rollout engine moves the release's content across the
		// clusters; one they run already needs no rollout.
		c.rollouts.poke()
		return created, nil
	}
	if err := c.fleet.SetCommit(app, content); err != nil && !errors.Is(err, fleet.ErrNotFound) {
		return created, err
	}
	return created, nil
}

// content is the commit whose tree the clusters get for a release of
// commit: the current release's content commit when commit changes
// nothing under the application's paths since it, else commit itself.
// Any doubt (no release yet, credentials or a compare that fail) means
// changed, which costs only a fetch per cluster.
func (c *Controller) content(ctx context.Context, app string, src *droverv1.Source, commit string) (string, error) {
	rels, err := c.store.ListReleases(ctx, app, 1)
	if err != nil {
		return "", err
	}
	if len(rels) == 0 {
		return commit, nil
	}
	if rels[0].GetCommit() == commit {
		// Resolved again: the release keeps the content it has.
		return rels[0].GetContentCommit(), nil
	}
	from := rels[0].GetContentCommit()
	if from == commit || isArtifact(src) {
		// A Helm chart or OCI artifact has no paths to compare: a new
		// revision is new content.
		return commit, nil
	}
	creds, err := c.Credentials(ctx, src.GetRepoUrl())
	if err != nil {
		c.log.Warn("compare releases: read repository credentials", "app", app, "err", err)
		return commit, nil
	}
	paths := append([]string{src.GetPath()}, src.GetExtraPaths()...)
	changed, err := c.resolver.PathsChanged(ctx, src.GetRepoUrl(), creds.Credentials, from, commit, paths)
	if err != nil {
		c.log.Warn("compare releases", "app", app, "commit", commit, "from", from, "err", err)
		return commit, nil
	}
	if changed {
		return commit, nil
	}
	return from, nil
}

// isArtifact reports whether src is a Helm repository or OCI source, whose
// releases pin revisions VERSION@sha256:HEX rather than Git commits.
func isArtifact(src *droverv1.Source) bool {
	return spec.SourceType(src) != droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED
}

// OnError records that an application's source could not be resolved.
func (c *Controller) OnError(ctx context.Context, app string, err error) {
	c.mu.Lock()
	_, known := c.specs[app]
	c.mu.Unlock()
	if known {
		c.recordSourceError(ctx, app, err.Error(), "application.source_failed", err.Error())
	}
}

// recordSourceError stores msg as app's source error, unless this replica
// knows it is stored already, and records an event when that changed what
// was stored: a replica that takes over a repository's polling neither
// repeats the last replica's event nor misses a recovery.
func (c *Controller) recordSourceError(ctx context.Context, app, msg, kind, eventMsg string) {
	c.mu.Lock()
	stored, ok := c.sourceErrs[app]
	c.mu.Unlock()
	if ok && stored == msg {
		return
	}
	changed, err := c.store.SetSourceError(ctx, app, msg)
	if err != nil {
		c.log.Warn("record the source error", "app", app, "err", err)
		return
	}
	c.mu.Lock()
	if _, known := c.specs[app]; known {
		c.sourceErrs[app] = msg
	}
	c.mu.Unlock()
	if !changed {
		return
	}
	if msg != "" {
		c.log.Warn("application source unresolved", "app", app, "err", msg)
	}
	c.event(ctx, kind, app, eventMsg)
}

func (c *Controller) event(ctx context.Context, kind, app, msg string) {
	if err := c.store.AddEvent(context.WithoutCancel(ctx), &droverv1.Event{
		Time: timestamppb.Now(), Kind: kind, Actor: "hub", Application: app, Message: msg,
	}); err != nil {
		c.log.Warn("record event", "kind", kind, "err", err)
	}
	c.notify()
}
