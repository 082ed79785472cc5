package apply

// Helm hooks: objects of a render annotated helm.sh/hook run at points of a
// release's life instead of being applied with the others.
//
// Drover keeps no Helm release records. A release is the application at
// one commit on one cluster: its first sync there is an install (the
// application has no completed sync in its inventory), every later commit
// an upgrade. Re-syncs of the same commit (drift, the interval, a retry
// after the hooks completed) run no hooks: which commit's hooks completed
// is recorded in the inventory (hookRecord), so an agent restarted after a
// hook completed does not run it again. A hook interrupted by a crash runs
// again, as does a hook that failed, on the application's next sync.
//
//   - pre-install / pre-upgrade run before the objects are applied (but
//     after the render's CRDs and Namespaces, as Helm installs crds/ first);
//     one that fails fails the sync and nothing else is applied.
//   - post-install / post-upgrade run once the objects are applied, pruned
//     and all healthy; one that fails fails the sync after the fact.
//   - pre-delete / post-delete run around DeleteRelease, when an
//     application leaves the cluster with prune on: the release is
//     rendered again for them, only when the inventory says it has some.
//   - pre-rollback / post-rollback never run: a Drover rollback is a new
//     release to an older commit, which runs its upgrade hooks.
//   - test hooks never run.
//
// A hook is applied, then waited for (a Job until Complete or Failed, a Pod
// until Succeeded or Failed, anything else until kstatus says Current),
// one at a time, ordered by helm.sh/hook-weight, then Kubernetes install
// order, then name. Hooks carry the application's label but are not in its
// inventory: they are never pruned, reported or healed as its objects, and
// one left behind by its delete policy stays, as with Helm.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/ssa/utils"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-dev/drover/internal/retry"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// AnnotationHook lists the events a Helm hook runs at, comma-separated.
	AnnotationHook = "helm.sh/hook"
	// AnnotationHookWeight orders hooks of one event, lowest first.
	AnnotationHookWeight = "helm.sh/hook-weight"
	// AnnotationHookDeletePolicy lists when a hook object is deleted.
	AnnotationHookDeletePolicy = "helm.sh/hook-delete-policy"

	// DefaultHookTimeout is Options.HookTimeout's default: Helm's --timeout.
	DefaultHookTimeout = 5 * time.Minute

	// hookPollInterval is how often a running hook is read back.
	hookPollInterval = 500 * time.Millisecond
)

// The hook events Drover runs.
const (
	HookPreInstall  = "pre-install"
	HookPostInstall = "post-install"
	HookPreUpgrade  = "pre-upgrade"
	HookPostUpgrade = "post-upgrade"
	HookPreDelete   = "pre-delete"
	HookPostDelete  = "post-delete"
)

// knownHookEvents are the events Helm defines; those not run by Drover
// (rollback, test) are accepted and never run.
var knownHookEvents = map[string]bool{
	HookPreInstall: true, HookPostInstall: true, HookPreUpgrade: true, HookPostUpgrade: true,
	HookPreDelete: true, HookPostDelete: true, "pre-rollback": true, "post-rollback": true,
	"test": true, "test-success": true, "test-failure": true,
}

// The delete policies.
const (
	hookBeforeCreation = "before-hook-creation"
	hookSucceeded      = "hook-succeeded"
	hookFailed         = "hook-failed"
)

// hook is one hook object of a render.
type hook struct {
	d        *desiredObject
	events   map[string]bool
	weight   int
	policies map[string]bool
}

// hookRecord is what the inventory remembers of a release's hooks.
type hookRecord struct {
	// Commit is the release whose pre-install or pre-upgrade hooks
	// completed.
	Commit string `json:"commit"`
	// Install: that release was the application's first on the cluster.
	Install bool `json:"install,omitempty"`
	// PostDone: its post-install or post-upgrade hooks completed too.
	PostDone bool `json:"postDone,omitempty"`
	// DeleteHooks: the release has pre-delete or post-delete hooks, which
	// deleting the application renders it again for.
	DeleteHooks bool `json:"deleteHooks,omitempty"`
	// PreDeleteDone: the application is being deleted and its pre-delete
	// hooks completed.
	PreDeleteDone bool `json:"preDeleteDone,omitempty"`
}

// HookError is a hook that failed, or could not be run.
type HookError struct {
	Event  string
	Object ObjectRef
	Err    error
}

func (e *HookError) Error() string {
	return fmt.Sprintf("%s hook %s: %v", e.Event, e.Object, e.Err)
}

func (e *HookError) Unwrap() error { return e.Err }

// splitHooks separates the hooks of a render from its objects. An object
// with an unknown event is logged and kept as a hook that never runs,
// as Helm does (old charts still carry Helm 2's crd-install); a weight
// that is not an integer is an error.
func (s *session) splitHooks(ds []*desiredObject) (objs []*desiredObject, hooks []*hook, err error) {
	for _, d := range ds {
		events, ok := d.obj.GetAnnotations()[AnnotationHook]
		if !ok {
			objs = append(objs, d)
			continue
		}
		h := &hook{d: d, events: map[string]bool{}, policies: map[string]bool{}}
		for _, e := range strings.Split(events, ",") {
			e = strings.ToLower(strings.TrimSpace(e))
			if !knownHookEvents[e] {
				s.log.Warn("unknown Helm hook event: it never runs", "object", d.ref.String(), "event", e)
				continue
			}
			h.events[e] = true
		}
		if w, ok := d.obj.GetAnnotations()[AnnotationHookWeight]; ok {
			if h.weight, err = strconv.Atoi(strings.TrimSpace(w)); err != nil {
				return nil, nil, &ObjectError{Object: d.ref, Err: fmt.Errorf("annotation %s: %q is not an integer", AnnotationHookWeight, w)}
			}
		}
		for _, p := range strings.Split(d.obj.GetAnnotations()[AnnotationHookDeletePolicy], ",") {
			if p = strings.ToLower(strings.TrimSpace(p)); p != "" {
				h.policies[p] = true
			}
		}
		if len(h.policies) == 0 {
			h.policies[hookBeforeCreation] = true
		}
		hooks = append(hooks, h)
	}
	// ds is in install order already: a stable sort by weight keeps it
	// within a weight.
	sort.SliceStable(hooks, func(i, j int) bool { return hooks[i].weight < hooks[j].weight })
	return objs, hooks, nil
}

// hooksFor returns the hooks that run at event, in order.
func hooksFor(hooks []*hook, event string) []*hook {
	var out []*hook
	for _, h := range hooks {
		if h.events[event] {
			out = append(out, h)
		}
	}
	return out
}

// preHooks runs the pre-install or pre-upgrade hooks of a new release and
// records that they completed. A re-sync of the release runs none.
func (r *Run) preHooks(ctx context.Context) error {
	if !r.preHooksDue() {
		return nil
	}
	install := r.inv.Commit == ""
	event := HookPreUpgrade
	if install {
		event = HookPreInstall
	}
	if err := r.s.runHooks(ctx, hooksFor(r.hooks, event), event); err != nil {
		return err
	}
	r.inv.Hooks = &hookRecord{
		Commit: r.commit, Install: install,
		DeleteHooks: len(hooksFor(r.hooks, HookPreDelete))+len(hooksFor(r.hooks, HookPostDelete)) > 0,
	}
	if err := r.s.writeInventory(ctx, r.inv); err != nil {
		return classify(ctx, err)
	}
	return nil
}

// preHooksDue reports whether this Run is a new release with hooks: not a
// re-sync of the last release that completed, nor a retry of one whose pre
// hooks completed.
func (r *Run) preHooksDue() bool {
	return len(r.hooks) > 0 && r.commit != r.inv.Commit && (r.inv.Hooks == nil || r.inv.Hooks.Commit != r.commit)
}

// splitDefinitions separates CRDs, Namespaces and ClusterRoles (ssa's
// first stage) from the other objects.
func splitDefinitions(ds []*desiredObject) (defs, rest []*desiredObject) {
	for _, d := range ds {
		if utils.IsClusterDefinition(d.obj) {
			defs = append(defs, d)
		} else {
			rest = append(rest, d)
		}
	}
	return defs, rest
}

// PostHooks runs the post-install or post-upgrade hooks of the release,
// once every object of the render is healthy, and records that they
// completed. It does nothing for a render without hooks, and for a
// release whose post hooks completed already. Call it after Prune.
func (r *Run) PostHooks(ctx context.Context) error {
	rec := r.inv.Hooks
	if len(r.hooks) == 0 || rec == nil || rec.Commit != r.commit || rec.PostDone {
		return nil
	}
	event := HookPostUpgrade
	if rec.Install {
		event = HookPostInstall
	}
	if hs := hooksFor(r.hooks, event); len(hs) > 0 {
		if err := r.waitHealthy(ctx, event); err != nil {
			return err
		}
		if err := r.s.runHooks(ctx, hs, event); err != nil {
			return err
		}
	}
	rec.PostDone = true
	return classify(ctx, r.s.writeInventory(ctx, r.inv))
}

// waitHealthy waits until every object of the render is healthy (or
// suspended), reading them back; the objects read become what Assess
// reports. A degraded object, or the deadline, stops the wait.
func (r *Run) waitHealthy(ctx context.Context, event string) error {
	refs := make([]ObjectRef, len(r.desired))
	for i, d := range r.desired {
		refs[i] = d.ref
	}
	deadline := time.Now().Add(r.s.a.opts.HookTimeout)
	for {
		live, err := r.s.observe(ctx, refs)
		if err != nil {
			return classify(ctx, err)
		}
		var waiting []string
		for _, d := range r.desired {
			d.final = live[d.ref.key()]
			h, msg := objectHealth(d.final)
			switch h {
			case droverv1.Health_HEALTH_HEALTHY, droverv1.Health_HEALTH_SUSPENDED:
			case droverv1.Health_HEALTH_DEGRADED:
				return fmt.Errorf("%s hooks not run: %s is %s: %s", event, d.ref, h, msg)
			default:
				waiting = append(waiting, d.ref.String()+" is "+h.String())
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return retry.Transient(fmt.Errorf("%s hooks not run: the objects are not healthy after %s: %s", event, r.s.a.opts.HookTimeout, strings.Join(waiting, "; ")))
		}
		if err := sleep(ctx, hookPollInterval); err != nil {
			return err
		}
	}
}

// deleteHooks returns the hooks of the release being deleted, rendering it
// when the inventory says it has delete hooks. A release that no longer
// renders for a reason retrying cannot help is deleted without its hooks:
// its objects must not stay forever because its source is gone.
func (s *session) deleteHooks(ctx context.Context, inv *inventory, render func(context.Context) ([]*unstructured.Unstructured, error)) ([]*hook, error) {
	if render == nil || inv.Hooks == nil || !inv.Hooks.DeleteHooks {
		return nil, nil
	}
	objs, err := render(ctx)
	if err == nil {
		var desired []*desiredObject
		if desired, err = s.prepare(objs); err == nil {
			var hooks []*hook
			if _, hooks, err = s.splitHooks(desired); err == nil {
				return hooks, nil
			}
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if retry.IsTransient(err) {
		return nil, fmt.Errorf("render the release for its delete hooks: %w", err)
	}
	s.log.Warn("deleting without the release's delete hooks: it does not render", "err", err)
	return nil, nil
}

// preDeleteHooks runs the pre-delete hooks, once: the inventory records
// that they completed, for a delete that fails after them and is retried.
func (s *session) preDeleteHooks(ctx context.Context, inv *inventory, hooks []*hook) error {
	pre := hooksFor(hooks, HookPreDelete)
	if len(pre) == 0 || inv.Hooks.PreDeleteDone {
		return nil
	}
	if err := s.runHooks(ctx, pre, HookPreDelete); err != nil {
		return err
	}
	inv.Hooks.PreDeleteDone = true
	return s.writeInventory(ctx, inv)
}

// postDeleteHooks runs the post-delete hooks once the objects are gone.
// When one fails the inventory is kept, emptied, so that the delete is
// retried and runs them again.
func (s *session) postDeleteHooks(ctx context.Context, inv *inventory, hooks []*hook) error {
	post := hooksFor(hooks, HookPostDelete)
	if len(post) == 0 {
		return nil
	}
	err := s.runHooks(ctx, post, HookPostDelete)
	if err != nil && ctx.Err() == nil {
		inv.Entries = nil
		if werr := s.writeInventory(ctx, inv); werr != nil {
			s.log.Warn("write inventory after a failed post-delete hook", "err", werr)
		}
	}
	return err
}

// runHooks runs hooks one at a time, stopping at the first that fails.
func (s *session) runHooks(ctx context.Context, hooks []*hook, event string) error {
	for _, h := range hooks {
		if err := s.runHook(ctx, h, event); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &HookError{Event: event, Object: h.d.ref, Err: err}
		}
	}
	return nil
}

// runHook applies one hook, waits for its outcome and applies its delete
// policy.
func (s *session) runHook(ctx context.Context, h *hook, event string) error {
	log := s.log.With("hook", h.d.ref.String(), "event", event)
	live, err := s.getLive(ctx, h.d.ref)
	if err != nil {
		return err
	}
	if live != nil {
		switch owner := live.GetLabels()[LabelApplication]; owner {
		case s.app:
		case "":
			// It would be deleted or changed: Drover never takes over an
			// object it did not create.
			return errors.New("an object of that name exists that Drover did not create; delete it or rename the hook")
		default:
			return &ConflictError{Owner: owner}
		}
		if h.policies[hookBeforeCreation] {
			if err := s.deleteHook(ctx, h.d.ref, live.GetUID(), true); err != nil {
				return err
			}
		}
	}
	u := h.d.obj.DeepCopy()
	if err := s.a.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.ForceOwnership, client.FieldOwner(FieldManager)); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	log.Info("running hook")
	outcome := s.waitHook(ctx, h.d.ref)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if outcome == nil && h.policies[hookSucceeded] || outcome != nil && h.policies[hookFailed] {
		if err := s.deleteHook(ctx, h.d.ref, "", false); err != nil {
			log.Warn("delete hook", "err", err)
		}
	}
	if outcome != nil {
		return outcome
	}
	log.Info("hook succeeded")
	return nil
}

// waitHook waits until the hook ref succeeded (nil) or failed (why).
func (s *session) waitHook(ctx context.Context, ref ObjectRef) error {
	deadline := time.Now().Add(s.a.opts.HookTimeout)
	for {
		live, err := s.getLive(ctx, ref)
		if err != nil {
			return err
		}
		if live == nil {
			return errors.New("deleted before it completed")
		}
		done, failure := hookOutcome(live)
		if done {
			return failure
		}
		if time.Now().After(deadline) {
			return retry.Transient(fmt.Errorf("not complete after %s", s.a.opts.HookTimeout))
		}
		if err := sleep(ctx, hookPollInterval); err != nil {
			return err
		}
	}
}

// hookOutcome says whether a hook is done, and why it failed if it did:
// as Helm, a Job is done when Complete or Failed and a Pod when it
// Succeeded or Failed; other kinds when kstatus says Current or Failed.
func hookOutcome(u *unstructured.Unstructured) (done bool, failure error) {
	gvk := u.GroupVersionKind()
	switch {
	case gvk.Group == "batch" && gvk.Kind == "Job":
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["status"] != "True" {
				continue
			}
			switch m["type"] {
			case "Complete":
				return true, nil
			case "Failed":
				return true, fmt.Errorf("job failed: %v: %v", m["reason"], m["message"])
			}
		}
		return false, nil
	case gvk.Group == "" && gvk.Kind == "Pod":
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		switch phase {
		case "Succeeded":
			return true, nil
		case "Failed":
			msg, _, _ := unstructured.NestedString(u.Object, "status", "message")
			return true, fmt.Errorf("pod failed: %s", msg)
		}
		return false, nil
	}
	res, err := status.Compute(u)
	if err != nil {
		return true, fmt.Errorf("compute status: %w", err)
	}
	switch res.Status {
	case status.CurrentStatus:
		return true, nil
	case status.FailedStatus:
		return true, errors.New(res.Message)
	}
	return false, nil
}

// getLive reads the object ref names, nil when it does not exist.
func (s *session) getLive(ctx context.Context, ref ObjectRef) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(ref.gvk())
	err := s.a.client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, u)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return u, nil
}

// deleteHook deletes a hook object (the one with uid, when given) and, when
// wait is set, waits until it is gone, so that the next instance is a new
// object.
func (s *session) deleteHook(ctx context.Context, ref ObjectRef, uid types.UID, wait bool) error {
	opts := []client.DeleteOption{client.PropagationPolicy(metav1.DeletePropagationBackground)}
	if uid != "" {
		opts = append(opts, client.Preconditions{UID: &uid})
	}
	err := s.a.client.Delete(ctx, ref.stub(), opts...)
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete the previous instance: %w", err)
	}
	if !wait {
		return nil
	}
	deadline := time.Now().Add(s.a.opts.HookTimeout)
	for {
		live, err := s.getLive(ctx, ref)
		if err != nil {
			return err
		}
		if live == nil || live.GetUID() != uid {
			return nil
		}
		if time.Now().After(deadline) {
			return retry.Transient(fmt.Errorf("the previous instance is still being deleted after %s", s.a.opts.HookTimeout))
		}
		if err := sleep(ctx, hookPollInterval); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
