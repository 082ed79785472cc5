package gitwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/backoff"
	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Target is one application's source as the Watcher polls it: a Git
// repository, a Helm repository or an OCI repository.
type Target struct {
	App     string
	RepoURL string
	// SourceType says what RepoURL is (spec.SourceType); unspecified is
	// Git.
	SourceType droverv1.SourceType
	// Ref is a branch, tag, full commit SHA, or "" for the default branch
	// (Git only).
	Ref string
	// Chart is the chart's name in a Helm repository.
	Chart string
	// Version is a Helm repository's or OCI repository's version: exact,
	// a tag, a semver range, or "" (artifact.CheckVersion).
	Version string
	// Insecure allows plain HTTP to a Helm repository or OCI registry.
	Insecure bool
	// Interval overrides the Watcher's default poll interval for this
	// application; zero means the default. A repository is polled at the
	// shortest interval of the applications that use it.
	Interval time.Duration
}

// Source tells the Watcher what to poll. Both methods may be called from
// several goroutines at once.
type Source interface {
	// Targets returns every application's current source. The Watcher calls
	// it when Run starts, after Changed, and on every Refresh, on its
	// scheduling goroutine: it should answer from memory.
	Targets() []Target
	// Credentials returns the stored credentials of repoURL (as a Target
	// spells it), or a zero Access if there are none.
	Credentials(ctx context.Context, repoURL string) (Access, error)
}

// Access is what reaching a repository takes: its credentials, and for a
// Helm repository or OCI registry behind a private CA, that CA.
type Access struct {
	Credentials
	// CAPEM holds PEM CA certificates trusted besides the system's (Helm
	// repositories and OCI registries; Git ignores it).
	CAPEM []byte
}

// RepoOwner is a Source that polls only some repositories on schedule: a
// hub replica polls those whose polling it owns, so that a repository is
// polled once however many replicas run. Refresh still resolves any
// application's source. Call Changed when the answer changes.
type RepoOwner interface {
	// PollsRepo reports whether the repository (by NormalizeURL) is
	// polled here.
	PollsRepo(key string) bool
}

// Sink receives the outcome of every poll. Reports are level-triggered:
// every poll reports every application of the repository, so OnResolved
// with an unchanged commit is normal and should be cheap, and OnResolved
// after OnError means the application's source error has cleared.
//
// Calls about one repository never overlap and arrive in poll order; calls
// about different repositories may run concurrently. A poll that was
// running when an application changed reports its old source once more:
// OnResolved names the ref it resolved so the Sink can drop a report for a
// ref the application no longer has, and a Sink may hear about an
// application that was just deleted.
type Sink interface {
	// OnResolved reports app's commit: for Git a commit SHA resolved from
	// ref; for a Helm or OCI source the revision VERSION@sha256:HEX
	// (artifact.Revision) resolved from the version constraint, passed as
	// ref.
	OnResolved(ctx context.Context, app, ref, commit string)
	OnError(ctx context.Context, app string, err error)
}

// Config tunes a Watcher; zero fields take the defaults.
type Config struct {
	// Interval is how often a repository is polled when none of its
	// applications asks for less. Default 1m.
	Interval time.Duration
	// MinInterval is the shortest interval an application may ask for;
	// shorter ones are raised to it, so one application cannot make the
	// hub hammer a Git server. Default 10s.
	MinInterval time.Duration
	// RetryBase is the first retry delay of a repository whose poll failed;
	// retries back off up to the repository's interval. Default 5s.
	RetryBase time.Duration
	// Timeout bounds one poll (credentials lookup and ls-remote, or the
	// index.yaml fetch or tag list, and any chart download to hash one
	// the index gives no digest for). Default 30s.
	Timeout time.Duration
	// Concurrency is how many repositories are polled at once. Default 4.
	Concurrency int
	Logger      *slog.Logger
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Interval < 0:
		return fmt.Errorf("gitwatch: Interval %v: must not be negative", c.Interval)
	case c.MinInterval < 0:
		return fmt.Errorf("gitwatch: MinInterval %v: must not be negative", c.MinInterval)
	case c.RetryBase < 0:
		return fmt.Errorf("gitwatch: RetryBase %v: must not be negative", c.RetryBase)
	case c.Timeout < 0:
		return fmt.Errorf("gitwatch: Timeout %v: must not be negative", c.Timeout)
	case c.Concurrency < 0:
		return fmt.Errorf("gitwatch: Concurrency %d: must not be negative", c.Concurrency)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.MinInterval == 0 {
		c.MinInterval = 10 * time.Second
	}
	if c.RetryBase == 0 {
		c.RetryBase = 5 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Concurrency == 0 {
		c.Concurrency = 4
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrUnknownApp: Refresh was asked for an application the Source does not
// list.
var ErrUnknownApp = errors.New("unknown application")

// Watcher polls the repositories of all applications and reports each
// application's commit to a Sink. Applications on the same repository
// (by NormalizeURL) share one ls-remote per poll, or for a Helm
// repository one index.yaml fetch, or for an OCI repository at most one
// tag list.
type Watcher struct {
	cfg      Config
	log      *slog.Logger
	resolver *Resolver
	src      Source
	sink     Sink

	// wake nudges Run's scheduling loop; it holds at most one pending nudge.
	wake chan struct{}
	// polls serialises polls of one repository, so a Refresh and a
	// scheduled poll never report the same applications out of order.
	polls keyedMutex

	mu      sync.Mutex // guards the fields below
	repos   map[string]*repoState
	stale   bool // Changed was called since the last reload
	running bool
}

// repoState is the schedule of one repository. It is owned by Run's loop
// and by the poll that finishes it, under Watcher.mu.
type repoState struct {
	key      string
	url      string   // as the first of its targets spells it
	targets  []Target // sorted by App
	interval time.Duration
	next     time.Time
	polling  bool
	again    bool // a Trigger or change arrived during a poll: poll again at once
	retry    *backoff.Backoff
}

// NewWatcher returns a Watcher that resolves with resolver, polls what src
// lists and reports to sink. It does nothing until Run.
func NewWatcher(cfg Config, resolver *Resolver, src Source, sink Sink) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if resolver == nil || src == nil || sink == nil {
		return nil, errors.New("gitwatch: NewWatcher needs a Resolver, a Source and a Sink")
	}
	cfg = cfg.withDefaults()
	return &Watcher{
		cfg:      cfg,
		log:      cfg.Logger,
		resolver: resolver,
		src:      src,
		sink:     sink,
		wake:     make(chan struct{}, 1),
		repos:    make(map[string]*repoState),
		stale:    true,
	}, nil
}

// Changed tells the Watcher that the Source's targets changed; a running
// Watcher reloads them at once, polls new repositories and applications
// whose ref changed, and forgets repositories no application uses.
func (w *Watcher) Changed() {
	w.mu.Lock()
	w.stale = true
	w.mu.Unlock()
	w.nudge()
}

// Trigger makes the next poll of repoURL start now (for push webhooks); if
// one is running, another follows it, since the push may have landed after
// its ls-remote. It reports whether any application uses repoURL.
func (w *Watcher) Trigger(repoURL string) bool {
	key := NormalizeURL(repoURL)
	w.mu.Lock()
	st, ok := w.repos[key]
	if ok {
		if st.polling {
			st.again = true
		} else {
			st.next = time.Time{}
		}
	}
	w.mu.Unlock()
	if ok {
		w.nudge()
	}
	return ok
}

func (w *Watcher) nudge() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run polls until ctx ends, then waits for running polls to stop and
// returns nil. One goroutine schedules every repository; at most
// Config.Concurrency polls run at once. Run may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return errors.New("gitwatch: Watcher is already running")
	}
	w.running = true
	w.mu.Unlock()

	slots := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.reloadIfStale(time.Now())
		st, wait := w.nextDue(time.Now())
		if st != nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			job, ok := w.startPoll(st)
			if !ok {
				<-slots
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				err := w.poll(ctx, job)
				w.finishPoll(job, err)
			}()
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		case <-timer.C:
		}
	}
}

// pollJob is a snapshot of one repository taken when its poll starts.
type pollJob struct {
	state   *repoState // nil for a Refresh
	key     string
	url     string
	targets []Target
	// report, if set, also receives each application's outcome (Refresh
	// takes its answer from it).
	report func(t Target, commit string, err error)
}

// nextDue returns a repository whose poll is due, or how long until one is.
// It scans every repository: at the hub's scale (up to a few thousand) that
// costs microseconds per wake-up and, unlike a heap, needs no index kept in
// step with schedules that Changed, Trigger and Refresh move.
func (w *Watcher) nextDue(now time.Time) (*repoState, time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var first *repoState
	for _, st := range w.repos {
		if st.polling {
			continue
		}
		if first == nil || st.next.Before(first.next) {
			first = st
		}
	}
	switch {
	case first == nil:
		// Nothing to poll; only Changed or Trigger can change that.
		return nil, time.Hour
	case !first.next.After(now):
		return first, 0
	}
	return nil, first.next.Sub(now)
}

// startPoll marks st as polling, unless it left the schedule or started
// polling while Run waited for a slot.
func (w *Watcher) startPoll(st *repoState) (pollJob, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.repos[st.key] != st || st.polling {
		return pollJob{}, false
	}
	st.polling = true
	return pollJob{state: st, key: st.key, url: st.url, targets: append([]Target(nil), st.targets...)}, true
}

// finishPoll schedules the repository's next poll: an interval (jittered)
// after a success, a backoff capped at the interval after a failure.
func (w *Watcher) finishPoll(job pollJob, err error) {
	w.mu.Lock()
	st := job.state
	st.polling = false
	w.scheduleLocked(st, err, time.Now())
	if st.again {
		st.again = false
		st.next = time.Time{}
	}
	w.mu.Unlock()
	w.nudge()
}

func (w *Watcher) scheduleLocked(st *repoState, err error, now time.Time) {
	if err == nil {
		st.retry.Reset()
		st.next = now.Add(jitter(st.interval))
		return
	}
	st.next = now.Add(min(st.retry.Next(), st.interval))
}

// jitter spreads a periodic delay by ±10%, so repositories that were added
// together do not keep polling together.
func jitter(d time.Duration) time.Duration { return backoff.Jitter(d, 0.1) }

// reloadIfStale rebuilds the schedule from the Source after Changed.
func (w *Watcher) reloadIfStale(now time.Time) {
	w.mu.Lock()
	stale := w.stale
	w.stale = false
	w.mu.Unlock()
	if !stale {
		return
	}
	groups := w.group(w.src.Targets())
	if o, ok := w.src.(RepoOwner); ok {
		for key := range groups {
			if !o.PollsRepo(key) {
				delete(groups, key)
			}
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	for key := range w.repos {
		if _, ok := groups[key]; !ok {
			delete(w.repos, key)
		}
	}
	for key, targets := range groups {
		interval := w.cfg.Interval
		for _, t := range targets {
			if t.Interval > 0 {
				interval = min(interval, max(t.Interval, w.cfg.MinInterval))
			}
		}
		st, ok := w.repos[key]
		if !ok {
			w.repos[key] = &repoState{
				key:      key,
				url:      targets[0].RepoURL,
				targets:  targets,
				interval: interval,
				retry:    backoff.New(min(w.cfg.RetryBase, interval), interval),
			}
			continue
		}
		// A new application or ref is resolved now rather than after up
		// to an interval; a shorter interval takes effect now too.
		if !sameRefs(st.targets, targets) {
			if st.polling {
				st.again = true
			} else {
				st.next = time.Time{}
			}
		}
		if latest := now.Add(interval); st.next.After(latest) {
			st.next = now.Add(jitter(interval))
		}
		if interval != st.interval {
			st.retry = backoff.New(min(w.cfg.RetryBase, interval), interval)
		}
		st.url, st.targets, st.interval = targets[0].RepoURL, targets, interval
	}
}

// group sorts targets into repositories by normalised URL, each sorted by
// application so the URL a repository is polled with is stable.
func (w *Watcher) group(targets []Target) map[string][]Target {
	groups := make(map[string][]Target)
	for _, t := range targets {
		if t.App == "" {
			w.log.Warn("git watcher: ignoring a target without an application name", "repo", RedactURL(t.RepoURL))
			continue
		}
		key := NormalizeURL(t.RepoURL)
		groups[key] = append(groups[key], t)
	}
	for _, ts := range groups {
		sort.Slice(ts, func(i, j int) bool { return ts[i].App < ts[j].App })
	}
	return groups
}

func sameRefs(a, b []Target) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		// Everything that decides what a poll resolves; not Interval.
		x, y := a[i], b[i]
		x.Interval, y.Interval = 0, 0
		if x != y {
			return false
		}
	}
	return true
}

// Refresh resolves app's ref now and returns its commit (droverctl app
// refresh). It polls app's whole repository through the same path as a
// scheduled poll, so every application on it is reported to the Sink, and
// the repository's next scheduled poll moves an interval away.
func (w *Watcher) Refresh(ctx context.Context, app string) (string, error) {
	if app == "" {
		return "", fmt.Errorf("refresh: app: must not be empty")
	}
	targets := w.src.Targets()
	var target *Target
	for i := range targets {
		if targets[i].App == app {
			target = &targets[i]
			break
		}
	}
	if target == nil {
		return "", fmt.Errorf("refresh %q: %w", app, ErrUnknownApp)
	}
	key := NormalizeURL(target.RepoURL)
	group := w.group(targets)[key]
	job := pollJob{key: key, url: group[0].RepoURL, targets: group}

	var commit string
	var appErr error
	job.report = func(t Target, c string, err error) {
		if t.App == app {
			commit, appErr = c, err
		}
	}
	err := w.poll(ctx, job)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}

	w.mu.Lock()
	if st, ok := w.repos[key]; ok && !st.polling {
		w.scheduleLocked(st, err, time.Now())
	}
	w.mu.Unlock()

	if err != nil {
		return "", err
	}
	return commit, appErr
}

// poll resolves every ref of one repository with one ls-remote and reports
// each application. It returns the repository's error, if the remote could
// not be listed; refs that do not resolve are reported per application but
// do not make the poll fail (retrying sooner would not help).
func (w *Watcher) poll(ctx context.Context, job pollJob) error {
	unlock, err := w.polls.Lock(ctx, job.key)
	if err != nil {
		return err
	}
	defer unlock()

	pollCtx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	acc, err := w.src.Credentials(pollCtx, job.url)
	if err != nil {
		err = fmt.Errorf("credentials for %s: %w", RedactURL(job.url), err)
	}
	// One URL names one kind of server, but nothing stops two
	// applications from disagreeing about it: each kind is resolved its
	// own way, and the poll fails if any of them failed as a whole.
	var repoErr error
	for _, group := range byResolver(job.targets) {
		var results []result
		if err != nil {
			results = failAll(group, err)
		} else {
			switch group[0].SourceType {
			case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY:
				results = resolveHelm(pollCtx, job.url, acc, group)
			case droverv1.SourceType_SOURCE_TYPE_OCI:
				results = resolveOCI(pollCtx, job.url, acc, group)
			default:
				results = w.resolveGit(pollCtx, job.url, acc.Credentials, group)
			}
		}
		if ctx.Err() != nil {
			// Shutting down (or the caller of Refresh gave up): not a
			// source error worth reporting.
			return ctx.Err()
		}
		for _, r := range results {
			if r.repoErr && repoErr == nil {
				repoErr = r.err
				w.log.WarnContext(ctx, "source poll failed", "repo", RedactURL(job.url), "err", r.err)
			}
			if r.err != nil {
				w.sink.OnError(ctx, r.target.App, r.err)
			} else {
				w.sink.OnResolved(ctx, r.target.App, r.target.constraint(), r.commit)
			}
			if job.report != nil {
				job.report(r.target, r.commit, r.err)
			}
		}
	}
	return repoErr
}

// constraint is what a Target's commit is resolved from: the ref of a Git
// source, the version of a Helm or OCI one.
func (t Target) constraint() string {
	if isArtifact(t.SourceType) {
		return t.Version
	}
	return t.Ref
}

func isArtifact(st droverv1.SourceType) bool {
	return st == droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY || st == droverv1.SourceType_SOURCE_TYPE_OCI
}

// result is one application's outcome of a poll. repoErr marks an error
// of the repository as a whole (it could not be listed), which makes the
// poll back off; an error of one application's ref or version does not.
type result struct {
	target  Target
	commit  string
	err     error
	repoErr bool
}

func failAll(targets []Target, err error) []result {
	out := make([]result, len(targets))
	for i, t := range targets {
		out[i] = result{target: t, err: err, repoErr: true}
	}
	return out
}

// byResolver splits a repository's targets into runs resolved together:
// Git targets in one, Helm and OCI targets by source type and by whether
// they allow plain HTTP. Order within a run is kept.
func byResolver(targets []Target) [][]Target {
	type key struct {
		st       droverv1.SourceType
		insecure bool
	}
	idx := map[key]int{}
	var out [][]Target
	for _, t := range targets {
		k := key{st: t.SourceType}
		if isArtifact(t.SourceType) {
			k.insecure = t.Insecure
		} else {
			k.st = droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED
		}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], t)
	}
	return out
}

// resolveGit resolves Git targets' refs with one ls-remote.
func (w *Watcher) resolveGit(ctx context.Context, url string, creds Credentials, targets []Target) []result {
	var refs []string
	for _, t := range targets {
		refs = append(refs, t.Ref)
	}
	commits, err := w.resolver.Resolve(ctx, url, creds, refs)
	var refErrs RefErrors
	if err != nil && !errors.As(err, &refErrs) {
		return failAll(targets, err)
	}
	out := make([]result, len(targets))
	for i, t := range targets {
		out[i] = result{target: t, commit: commits[t.Ref]}
		if e := refErrs.For(t.Ref); e != nil {
			// Not assigned directly: a nil *RefError is a non-nil error.
			out[i].err = e
		}
	}
	return out
}

func artifactAccess(acc Access, insecure bool) artifact.Access {
	return artifact.Access{Username: acc.Username, Password: acc.Password, CAPEM: acc.CAPEM, Insecure: insecure}
}

// resolveHelm resolves Helm targets' chart versions with one fetch of the
// repository's index.yaml.
func resolveHelm(ctx context.Context, url string, acc Access, targets []Target) []result {
	aacc := artifactAccess(acc, targets[0].Insecure)
	ix, err := artifact.FetchIndex(ctx, url, aacc)
	if err != nil {
		return failAll(targets, err)
	}
	out := make([]result, len(targets))
	for i, t := range targets {
		rev, err := ix.Resolve(ctx, t.Chart, t.Version, aacc)
		out[i] = result{target: t, err: err}
		if err == nil {
			out[i].commit = rev.String()
		}
		// A chart archive the hub had to download to hash failing to
		// arrive is the repository failing, not the version.
		if err != nil && retry.IsTransient(err) {
			out[i].repoErr = true
		}
	}
	return out
}

// resolveOCI resolves OCI targets' tags or ranges, listing the
// repository's tags at most once.
func resolveOCI(ctx context.Context, url string, acc Access, targets []Target) []result {
	repo, err := artifact.OpenOCI(url, artifactAccess(acc, targets[0].Insecure))
	if err != nil {
		return failAll(targets, err)
	}
	defer repo.Close()
	out := make([]result, len(targets))
	for i, t := range targets {
		rev, err := repo.Resolve(ctx, t.Version)
		out[i] = result{target: t, err: err}
		if err == nil {
			out[i].commit = rev.String()
		}
		// A tag that is not there, or no tag in range, is this
		// application's; anything else (auth, network) is the registry's.
		if err != nil && !errors.Is(err, artifact.ErrNotFound) && !errors.Is(err, artifact.ErrInvalid) {
			out[i].repoErr = true
		}
	}
	return out
}
