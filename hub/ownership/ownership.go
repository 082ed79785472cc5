// Package ownership decides which hub replica runs each background job (an
// application's rollout engine, a repository's Git polling) and holds the
// lease that lets it act.
//
// Two things decide, on purpose, and neither alone is enough:
//
//   - Rendezvous hashing over the live members (as membership, gossip,
//     sees them) says which replica should own a job: every replica
//     computes the same answer from the same members, a replica that dies
//     loses only its own jobs, and one that joins takes its share from
//     every other.
//   - A lease per job in PostgreSQL says which replica does: it is taken
//     only when free or lapsed, with a new epoch each time it changes
//     hands, and every write of a job's results checks it in its own
//     transaction (store.CommitRollout and the other fenced writes).
//
// While gossip is cut, two replicas may both think they should own a job;
// only the one holding the unexpired lease acts, and the other keeps asking
// until the lease is released or lapses. When gossip heals, the replica the
// hash no longer names releases the lease, and the job moves once. A
// replica that is killed keeps its leases until they lapse (TTL); one that
// stops cleanly releases them at once.
package ownership

import (
	"context"
	"hash/fnv"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/drover-dev/drover/hub/store"
)

// Default lease timing. A lease lapses TTL after its last renewal; it is
// renewed every Renew, so a replica survives three failed renewals (a
// database hiccup) before its jobs move, and a killed replica's jobs move
// within TTL plus one round after its last renewal: at most 7.5 s, the
// same order as membership's failure detection (about 5 s).
const (
	DefaultTTL   = 6 * time.Second
	DefaultRenew = 1500 * time.Millisecond
)

// Members is the membership the keeper hashes over.
type Members interface {
	// Members lists the live replicas' names, this one included.
	Members() []string
	// Changes signals, coalesced, that the members changed.
	Changes() <-chan struct{}
}

// Store is where leases live.
type Store interface {
	AcquireLeases(ctx context.Context, h store.Holder, jobs []string, ttl time.Duration) ([]store.Lease, error)
	ReleaseLeases(ctx context.Context, h store.Holder, jobs []string) error
}

// Config is what a Keeper works with. Holder and Store are required.
type Config struct {
	Holder store.Holder
	// Members is the replicas' membership; nil means this replica alone,
	// which then owns every job (still under leases, so a second replica
	// started by mistake without gossip cannot act at the same time).
	Members Members
	Store   Store
	// TTL and Renew default to DefaultTTL and DefaultRenew.
	TTL, Renew time.Duration
	Logger     *slog.Logger
}

// Keeper acquires and renews the leases of the jobs this replica should
// own, and releases those it should not. Its methods may be called from
// any goroutine.
type Keeper struct {
	cfg     Config
	log     *slog.Logger
	poke    chan struct{}
	changes chan struct{}

	mu   sync.Mutex // guards the fields below
	jobs []string
	held map[string]held
}

type held struct {
	lease store.Lease
	// until is when this process stops trusting the lease, on its own
	// clock: the renewal's start plus the TTL, before the database's
	// expiry.
	until time.Time
}

// New returns a Keeper; Run makes it work.
func New(cfg Config) *Keeper {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Renew <= 0 {
		cfg.Renew = DefaultRenew
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keeper{
		cfg: cfg, log: log,
		poke: make(chan struct{}, 1), changes: make(chan struct{}, 1),
		held: map[string]held{},
	}
}

// SetJobs says which jobs exist; the keeper works out which are this
// replica's at once.
func (k *Keeper) SetJobs(jobs []string) {
	jobs = slices.Compact(slices.Sorted(slices.Values(jobs)))
	k.mu.Lock()
	same := slices.Equal(jobs, k.jobs)
	k.jobs = jobs
	k.mu.Unlock()
	if !same {
		signal(k.poke)
	}
}

// Lease returns this replica's lease on job while it holds one it still
// trusts. Writes under it are checked by the store all the same.
func (k *Keeper) Lease(job string) (store.Lease, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, ok := k.held[job]
	if !ok || !time.Now().Before(h.until) {
		return store.Lease{}, false
	}
	return h.lease, true
}

// Held lists the jobs this replica holds, sorted.
func (k *Keeper) Held() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(maps.Keys(k.held))
}

// Changes signals, coalesced, that this replica gained or lost jobs.
func (k *Keeper) Changes() <-chan struct{} { return k.changes }

// Run keeps the leases until ctx ends, then releases them so their jobs
// move at once.
func (k *Keeper) Run(ctx context.Context) error {
	var memberChanges <-chan struct{}
	if k.cfg.Members != nil {
		memberChanges = k.cfg.Members.Changes()
	}
	t := time.NewTicker(k.cfg.Renew)
	defer t.Stop()
	for {
		k.round(ctx)
		select {
		case <-ctx.Done():
			k.releaseAll()
			return nil
		case <-t.C:
		case <-k.poke:
		case <-memberChanges:
		}
	}
}

// round releases the jobs this replica should no longer own, then takes or
// renews those it should.
func (k *Keeper) round(ctx context.Context) {
	members := []string{k.cfg.Holder.Replica}
	if k.cfg.Members != nil {
		members = k.cfg.Members.Members()
	}
	k.mu.Lock()
	var want, drop []string
	for _, job := range k.jobs {
		if Owner(job, members) == k.cfg.Holder.Replica {
			want = append(want, job)
		}
	}
	for job := range k.held {
		if _, ok := slices.BinarySearch(want, job); !ok {
			drop = append(drop, job)
			// Stop acting on it before letting it go.
			delete(k.held, job)
		}
	}
	k.mu.Unlock()
	changed := len(drop) > 0
	if len(drop) > 0 {
		if err := k.cfg.Store.ReleaseLeases(ctx, k.cfg.Holder, drop); err != nil && ctx.Err() == nil {
			// They lapse by themselves within the TTL.
			k.log.Warn("release job leases", "jobs", len(drop), "err", err)
		}
		k.log.Info("jobs handed over", "jobs", drop)
	}

	start := time.Now()
	got, err := k.cfg.Store.AcquireLeases(ctx, k.cfg.Holder, want, k.cfg.TTL)
	if err != nil {
		if ctx.Err() == nil {
			// What is held stays trusted until its deadline.
			k.log.Warn("renew job leases", "jobs", len(want), "err", err)
		}
		if changed {
			signal(k.changes)
		}
		return
	}
	next := make(map[string]held, len(got))
	for _, l := range got {
		next[l.Job] = held{lease: l, until: start.Add(k.cfg.TTL)}
	}
	k.mu.Lock()
	var gained []string
	for job, h := range next {
		if old, ok := k.held[job]; !ok || old.lease.Epoch != h.lease.Epoch {
			gained = append(gained, job)
		}
	}
	lost := 0
	for job := range k.held {
		if _, ok := next[job]; !ok {
			lost++
		}
	}
	k.held = next
	k.mu.Unlock()
	if len(gained) > 0 {
		slices.Sort(gained)
		k.log.Info("jobs taken", "jobs", gained)
	}
	if lost > 0 {
		k.log.Warn("job leases lost to another replica", "jobs", lost)
	}
	if changed || len(gained) > 0 || lost > 0 {
		signal(k.changes)
	}
}

func (k *Keeper) releaseAll() {
	k.mu.Lock()
	k.held = map[string]held{}
	k.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := k.cfg.Store.ReleaseLeases(ctx, k.cfg.Holder, nil); err != nil {
		k.log.Warn("release job leases at shutdown; they lapse within their TTL", "err", err)
	}
}

// Owner is the member that should own job: the one with the highest
// rendezvous weight for it. Every replica computes the same answer from
// the same members; "" when there are none.
func Owner(job string, members []string) string {
	var (
		best   string
		bestW  uint64
		chosen bool
	)
	for _, m := range members {
		w := weight(m, job)
		if !chosen || w > bestW || (w == bestW && m < best) {
			best, bestW, chosen = m, w, true
		}
	}
	return best
}

// weight hashes a member and a job together: FNV-1a, then a 64-bit
// finalizer so that names differing in one character spread evenly.
func weight(member, job string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(job))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// RolloutJob is the job of an application's rollout engine.
func RolloutJob(app string) string { return "rollout/" + app }

// GitJob is the job of polling a repository (its normalised URL).
func GitJob(repo string) string { return "git/" + repo }
