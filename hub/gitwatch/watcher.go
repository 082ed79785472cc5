package gitwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/drover-dev/drover/internal/backoff"
)

// Target is one application's Git source as the Watcher polls it.
type Target struct {
	App     string
	RepoURL string
	// Ref is a branch, tag, full commit SHA, or "" for the default branch.
	Ref string
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
	// spells it), or zero Credentials if there are none.
	Credentials(ctx context.Context, repoURL string) (Credentials, error)
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
	// Timeout bounds one poll (credentials lookup and ls-remote). Default 30s.
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
// (by NormalizeURL) share one ls-remote per poll.
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
		if a[i].App != b[i].App || a[i].Ref != b[i].Ref || a[i].RepoURL != b[i].RepoURL {
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
	var refs []string
	for _, t := range job.targets {
		refs = append(refs, t.Ref)
	}
	var commits map[string]string
	creds, err := w.src.Credentials(pollCtx, job.url)
	if err != nil {
		err = fmt.Errorf("credentials for %s: %w", RedactURL(job.url), err)
	} else {
		commits, err = w.resolver.Resolve(pollCtx, job.url, creds, refs)
	}
	if ctx.Err() != nil {
		// Shutting down (or the caller of Refresh gave up): not a source
		// error worth reporting.
		return ctx.Err()
	}
	var refErrs RefErrors
	repoErr := err
	if errors.As(err, &refErrs) {
		repoErr = nil
	}
	if repoErr != nil {
		w.log.WarnContext(ctx, "git poll failed", "repo", RedactURL(job.url), "err", repoErr)
	}
	for _, t := range job.targets {
		var appErr error
		switch {
		case repoErr != nil:
			appErr = repoErr
		case refErrs.For(t.Ref) != nil:
			appErr = refErrs.For(t.Ref)
		}
		if appErr != nil {
			w.sink.OnError(ctx, t.App, appErr)
		} else {
			w.sink.OnResolved(ctx, t.App, t.Ref, commits[t.Ref])
		}
		if job.report != nil {
			job.report(t, commits[t.Ref], appErr)
		}
	}
	return repoErr
}
