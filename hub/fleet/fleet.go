// Package fleet is the hub's in-memory model of the fleet: clusters and
// their labels, applications and their current release, which application
// is placed on which cluster, and each cluster's assignment.
//
// Every change recomputes only the clusters it can affect and publishes
// each one's assignment as an immutable, versioned Snapshot (the idea of
// go-control-plane's SnapshotCache). A cluster's Connect stream Watches its
// snapshot and is woken when the version changes; the version is a content
// hash, so recomputing the same content wakes nobody.
//
// The package is pure computation: the store loads it, the admin API and
// the Git watcher feed it, agentapi reads it. It also holds the validation
// of names, labels and application specs, so every entry point refuses the
// same inputs.
package fleet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/internal/artifact"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// ErrNotFound is returned (wrapped) for an application or cluster the fleet
// does not know.
var ErrNotFound = errors.New("not found")

// Snapshot is one published assignment of one cluster. It is immutable:
// the Fleet never changes a Snapshot or anything it points to after
// publishing it, and callers must not either (to send it with a nonce, copy
// the top-level Assignment and share its Applications). Assignment.Version
// equals Version; Assignment.Nonce is empty.
type Snapshot struct {
	Version    string
	Assignment *droverv1.Assignment
}

// Fleet is the hub's fleet model. It is safe for concurrent use. Mutations
// compute under the lock; nothing in the Fleet runs on its own goroutine.
type Fleet struct {
	logger *slog.Logger

	mu       sync.Mutex // guards the fields below
	clusters map[string]*clusterState
	apps     map[string]*appState
	// pending holds the wake channels of Watch calls on clusters that do
	// not exist (yet, or any more), closed when the cluster is set. It is
	// bounded by the names callers ask about, which agentapi takes from
	// authenticated certificates.
	pending map[string]chan struct{}
	// labelView is what ClusterLabels returns until the next change of a
	// cluster's labels or of the set of clusters; nil when stale.
	labelView map[string]map[string]string
}

type appState struct {
	ca *compiledApp
	// placed is every cluster the placement selects, resolved commit or
	// not.
	placed map[string]struct{}
}

type clusterState struct {
	// target is replaced, never modified, when the labels change.
	target *target
	// slots has one entry per application placed on the cluster, sorted
	// by name: the assignment's order, so publishing does not sort.
	slots []slot
	snap  *Snapshot
	// changed is closed when snap's version changes. nil until someone
	// Watches, so clusters without a stream allocate nothing.
	changed chan struct{}
}

// slot is one application's part of a cluster's assignment.
type slot struct {
	app string
	// aa is nil while the application has no commit for the cluster.
	aa     *droverv1.AppAssignment
	digest [sha256.Size]byte
}

// New returns an empty Fleet.
func New(logger *slog.Logger) *Fleet {
	return &Fleet{
		logger:   logger,
		clusters: make(map[string]*clusterState),
		apps:     make(map[string]*appState),
		pending:  make(map[string]chan struct{}),
	}
}

// SetCluster adds a cluster or replaces its labels, and recomputes its
// assignment. Invalid input changes nothing.
func (f *Fleet) SetCluster(name string, lbls map[string]string) error {
	if err := spec.ValidateName(name); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := spec.ValidateLabels(lbls); err != nil {
		return fmt.Errorf("cluster %s: %w", name, err)
	}
	lbls = maps.Clone(lbls)
	if lbls == nil {
		lbls = map[string]string{}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	cs, ok := f.clusters[name]
	if ok && maps.Equal(cs.target.set, labels.Set(lbls)) {
		return nil
	}
	if !ok {
		cs = &clusterState{}
		f.clusters[name] = cs
	}
	cs.target = newTarget(name, lbls)
	f.labelView = nil
	for appName, as := range f.apps {
		if as.ca.placement.matches(name, cs.target.set) {
			as.placed[name] = struct{}{}
			cs.setSlot(as.ca.slot(cs.target))
		} else {
			delete(as.placed, name)
			cs.deleteSlot(appName)
		}
	}
	changed := f.publishLocked(cs)
	if ch, ok := f.pending[name]; ok {
		close(ch)
		delete(f.pending, name)
	}
	f.logger.Debug("cluster set", "cluster", name, "apps", len(cs.slots), "changed", changed)
	return nil
}

// RemoveCluster forgets a cluster. Its watchers wake and find no snapshot.
func (f *Fleet) RemoveCluster(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs, ok := f.clusters[name]
	if !ok {
		return
	}
	for _, s := range cs.slots {
		delete(f.apps[s.app].placed, name)
	}
	delete(f.clusters, name)
	f.labelView = nil
	if cs.changed != nil {
		close(cs.changed)
	}
	f.logger.Debug("cluster removed", "cluster", name)
}

// SetApp adds or replaces an application and recomputes the clusters it
// was or is now placed on. The Fleet copies app and its pins but keeps
// app.Spec and app.Credentials as given: the caller hands them over and
// never changes them afterwards (the hub's control logic gives it protos
// read from the store, so a second copy of every spec would buy nothing).
// It refuses only what it cannot place (a bad name, a missing spec,
// selectors that do not compile, a malformed commit): spec.ValidateSpec's
// fuller rules belong to the admin API, so that a stricter rule in a new
// hub version never drops an application already running on clusters (its
// agents would prune it). Invalid input changes nothing.
func (f *Fleet) SetApp(app *App) error {
	if app == nil {
		return errors.New("application: nil")
	}
	if err := spec.ValidateName(app.Name); err != nil {
		return fmt.Errorf("application: %w", err)
	}
	cp, err := copyApp(app)
	if err != nil {
		return fmt.Errorf("application %s: %w", app.Name, err)
	}
	ca, err := compileApp(cp)
	if err != nil {
		return fmt.Errorf("application %s: %w", app.Name, err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	old, existed := f.apps[cp.Name]
	if existed && sameApp(old.ca.app, cp) {
		// Stores resync by setting everything again; skip the recompute.
		return nil
	}
	as := &appState{ca: ca, placed: make(map[string]struct{})}
	f.apps[cp.Name] = as
	recomputed, changed := 0, 0
	for name, cs := range f.clusters {
		_, wasPlaced := cs.findSlot(cp.Name)
		if !ca.placement.matches(name, cs.target.set) {
			if wasPlaced {
				cs.deleteSlot(cp.Name)
				recomputed++
				if f.publishLocked(cs) {
					changed++
				}
			}
			continue
		}
		as.placed[name] = struct{}{}
		recomputed++
		if f.updateSlotLocked(cs, ca) {
			changed++
		}
	}
	f.logger.Debug("application set", "app", cp.Name, "commit", cp.Commit,
		"new", !existed, "placed", len(as.placed), "recomputed", recomputed, "changed", changed)
	return nil
}

// sameApp reports whether two Apps would give every cluster the same
// assignment and placement.
func sameApp(a, b *App) bool {
	return a.Name == b.Name && a.Commit == b.Commit && maps.Equal(a.Pins, b.Pins) &&
		proto.Equal(a.Spec, b.Spec) && proto.Equal(a.Credentials, b.Credentials)
}

// RemoveApp forgets an application; the clusters it was placed on get
// assignments without it.
func (f *Fleet) RemoveApp(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	as, ok := f.apps[name]
	if !ok {
		return
	}
	delete(f.apps, name)
	changed := 0
	for clusterName := range as.placed {
		cs := f.clusters[clusterName]
		cs.deleteSlot(name)
		if f.publishLocked(cs) {
			changed++
		}
	}
	f.logger.Debug("application removed", "app", name, "changed", changed)
}

// SetCommit makes commit the application's current release. Only the
// clusters it is placed on are recomputed, and only those whose assignment
// changes (not the pinned ones) are woken.
func (f *Fleet) SetCommit(appName, commit string) error {
	if err := checkCommit(commit); err != nil {
		return fmt.Errorf("application %s: commit: %w", appName, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	as, ok := f.apps[appName]
	if !ok {
		return fmt.Errorf("application %s: %w", appName, ErrNotFound)
	}
	if as.ca.app.Commit == commit {
		return nil
	}
	as.ca = as.ca.withCommit(commit)
	changed := 0
	for clusterName := range as.placed {
		if f.updateSlotLocked(f.clusters[clusterName], as.ca) {
			changed++
		}
	}
	f.logger.Debug("commit set", "app", appName, "commit", commit, "placed", len(as.placed), "changed", changed)
	return nil
}

// updateSlotLocked recomputes ca's part of cs's assignment and publishes
// cs when it changed.
func (f *Fleet) updateSlotLocked(cs *clusterState, ca *compiledApp) bool {
	s := ca.slot(cs.target)
	if i, ok := cs.findSlot(ca.app.Name); ok && cs.slots[i].digest == s.digest && (cs.slots[i].aa == nil) == (s.aa == nil) {
		// Same content: keep the message the current snapshot holds.
		return false
	}
	cs.setSlot(s)
	return f.publishLocked(cs)
}

// slot computes ca's part of t's assignment.
func (ca *compiledApp) slot(t *target) slot {
	aa, digest := ca.assign(t)
	return slot{app: ca.app.Name, aa: aa, digest: digest}
}

// findSlot returns app's index in cs.slots, or where it would go.
func (cs *clusterState) findSlot(app string) (int, bool) {
	return slices.BinarySearchFunc(cs.slots, app, func(s slot, app string) int { return strings.Compare(s.app, app) })
}

func (cs *clusterState) setSlot(s slot) {
	i, found := cs.findSlot(s.app)
	if found {
		cs.slots[i] = s
		return
	}
	cs.slots = slices.Insert(cs.slots, i, s)
}

func (cs *clusterState) deleteSlot(app string) {
	if i, found := cs.findSlot(app); found {
		cs.slots = slices.Delete(cs.slots, i, i+1)
	}
}

// publishLocked rebuilds cs's snapshot from its slots and, if the version
// changed, swaps it in and wakes cs's watchers. It reports whether it did.
func (f *Fleet) publishLocked(cs *clusterState) bool {
	apps := make([]*droverv1.AppAssignment, 0, len(cs.slots))
	h := sha256.New()
	for _, s := range cs.slots {
		if s.aa != nil {
			apps = append(apps, s.aa)
			h.Write(s.digest[:])
		}
	}
	v := versionOf(h)
	if cs.snap != nil && cs.snap.Version == v {
		return false
	}
	cs.snap = &Snapshot{Version: v, Assignment: &droverv1.Assignment{Version: v, Applications: apps}}
	if cs.changed != nil {
		close(cs.changed)
		cs.changed = nil
	}
	return true
}

// Watch returns the cluster's current snapshot (nil for an unknown cluster)
// and a channel that is closed at the next change of the cluster's
// assignment version, including the cluster's removal and, for an unknown
// cluster, its creation. A caller woken by the channel calls Watch again
// and gets the newest snapshot, however many changes happened meanwhile.
func (f *Fleet) Watch(cluster string) (*Snapshot, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs, ok := f.clusters[cluster]
	if !ok {
		ch, ok := f.pending[cluster]
		if !ok {
			ch = make(chan struct{})
			f.pending[cluster] = ch
		}
		return nil, ch
	}
	if cs.changed == nil {
		cs.changed = make(chan struct{})
	}
	return cs.snap, cs.changed
}

// Assignment returns the cluster's current assignment, or nil for an
// unknown cluster. It must not be modified (see Snapshot).
func (f *Fleet) Assignment(cluster string) *droverv1.Assignment {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cs, ok := f.clusters[cluster]; ok {
		return cs.snap.Assignment
	}
	return nil
}

// PlacedClusters returns the names of the clusters the application's
// placement selects, sorted, whether or not it has a commit yet. It
// returns nil for an unknown application.
func (f *Fleet) PlacedClusters(app string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	as, ok := f.apps[app]
	if !ok {
		return nil
	}
	return slices.Sorted(maps.Keys(as.placed))
}

// AppsOn returns the names of the applications placed on the cluster,
// sorted, whether or not they have a commit yet. It returns nil for an
// unknown cluster.
func (f *Fleet) AppsOn(cluster string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs, ok := f.clusters[cluster]
	if !ok {
		return nil
	}
	names := make([]string, len(cs.slots))
	for i, s := range cs.slots {
		names[i] = s.app
	}
	return names
}

// Clusters returns every cluster, sorted by name; the caller owns the
// copies.
func (f *Fleet) Clusters() []Cluster {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Cluster, 0, len(f.clusters))
	for _, cs := range f.clusters {
		out = append(out, Cluster{Name: cs.target.name, Labels: maps.Clone(map[string]string(cs.target.set))})
	}
	slices.SortFunc(out, func(a, b Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ClusterLabels returns every cluster's labels by cluster name. Unlike
// Clusters it copies nothing: the map and the label maps in it are shared
// by all callers until the next change of the clusters, and must not be
// modified. It is for readers that look at the whole fleet often (the
// rollout engine steps on every status write) and would otherwise copy
// every cluster's labels each time.
func (f *Fleet) ClusterLabels() map[string]map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.labelView == nil {
		// A target's label set is replaced, never modified, so sharing
		// it is safe.
		f.labelView = make(map[string]map[string]string, len(f.clusters))
		for name, cs := range f.clusters {
			f.labelView[name] = cs.target.set
		}
	}
	return f.labelView
}

// copyApp returns a copy of app the Fleet can keep, sharing its spec and
// credentials (see SetApp), after checking what placement and encoding
// need: a spec, full commit SHAs, pins naming valid clusters, and strings
// protobuf can encode (so appDigest never fails).
func copyApp(app *App) (*App, error) {
	if app.Spec == nil {
		return nil, errors.New("spec: required")
	}
	if app.Commit != "" {
		if err := checkCommit(app.Commit); err != nil {
			return nil, fmt.Errorf("commit: %w", err)
		}
	}
	for cluster, commit := range app.Pins {
		if err := spec.ValidateName(cluster); err != nil {
			return nil, fmt.Errorf("pin: %w", err)
		}
		if err := checkCommit(commit); err != nil {
			return nil, fmt.Errorf("pin for cluster %s: %w", cluster, err)
		}
	}
	if _, err := proto.Marshal(app.Spec); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	cp := &App{
		Name:   app.Name,
		Spec:   app.Spec,
		Commit: app.Commit,
		Pins:   maps.Clone(app.Pins),
	}
	if app.Credentials != nil {
		// Not wrapped: the error would describe the credentials.
		if _, err := proto.Marshal(app.Credentials); err != nil {
			return nil, errors.New("credentials: not encodable (invalid UTF-8)")
		}
		cp.Credentials = app.Credentials
	}
	return cp, nil
}

var commitSHA = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)

// checkCommit accepts full lower-case SHA-1 or SHA-256 object names, or a
// Helm or OCI revision VERSION@sha256:HEX, only: agents never resolve
// anything, so an abbreviation, a ref or a range would be a bug upstream.
func checkCommit(commit string) error {
	if !commitSHA.MatchString(commit) && !artifact.IsRevision(commit) {
		return fmt.Errorf("%q is neither a full lower-case commit SHA nor a revision VERSION@sha256:HEX", commit)
	}
	return nil
}

// Errors of Preview.
var (
	// ErrNotPlaced: the application's placement does not select the
	// cluster.
	ErrNotPlaced = errors.New("the application is not placed on the cluster")
	// ErrNoCommit: the application has no resolved commit for the
	// cluster yet.
	ErrNoCommit = errors.New("the application has no release for the cluster yet")
)

// Preview returns application app's part of cluster's assignment as the
// cluster would get it at commit, with the cluster's overrides and
// variables, or at the commit the cluster is meant to run now when commit
// is "" (a rollout may hold it on an earlier one). It returns an error
// wrapping ErrNotFound or ErrNotPlaced, or, with commit "", ErrNoCommit when
// the application has none for the cluster yet. The result carries the
// source's credentials, like an assignment: callers showing it to anyone
// must drop them.
func (f *Fleet) Preview(app, cluster, commit string) (*droverv1.AppAssignment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	as, ok := f.apps[app]
	if !ok {
		return nil, fmt.Errorf("application %q: %w", app, ErrNotFound)
	}
	cs, ok := f.clusters[cluster]
	if !ok {
		return nil, fmt.Errorf("cluster %q: %w", cluster, ErrNotFound)
	}
	if _, ok := as.placed[cluster]; !ok {
		return nil, fmt.Errorf("application %q on cluster %q: %w", app, cluster, ErrNotPlaced)
	}
	ca := as.ca
	if commit != "" {
		// A copy pinning every cluster to commit: the variants it builds
		// die with it, so previews cost the fleet nothing.
		ca = ca.withCommit(commit)
		ca.app.Pins = nil
	}
	aa, _ := ca.assign(cs.target)
	if aa == nil {
		return nil, fmt.Errorf("application %q on cluster %q: %w", app, cluster, ErrNoCommit)
	}
	return proto.CloneOf(aa), nil
}
