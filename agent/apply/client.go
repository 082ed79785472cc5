package apply

import (
	"context"
	"log/slog"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// recorder keeps what the API server answered for each object during one
// operation. ssa's ResourceManager reads and applies objects but returns
// only an action per object; Drover needs the objects themselves: the
// apply response to fingerprint (see drift.go) and to assess, without
// reading every object again.
type recorder struct {
	mu      sync.Mutex                            // guards the fields below
	live    map[string]*unstructured.Unstructured // last read or applied state, by ObjectRef.key
	dryRun  map[string]*unstructured.Unstructured // server-side dry-run responses
	applied map[string]bool                       // written by a real apply
	failed  map[string]error                      // real applies the API server refused
	writes  int                                   // real applies sent
}

func newRecorder() *recorder {
	return &recorder{
		live:    map[string]*unstructured.Unstructured{},
		dryRun:  map[string]*unstructured.Unstructured{},
		applied: map[string]bool{},
		failed:  map[string]error{},
	}
}

func (r *recorder) get(key string) (live, dryRun *unstructured.Unstructured, applied bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live[key], r.dryRun[key], r.applied[key]
}

func (r *recorder) failure(key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed[key]
}

func (r *recorder) sent() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

func (r *recorder) recordRead(u *unstructured.Unstructured) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := refOf(u).key()
	if !r.applied[key] {
		r.live[key] = u.DeepCopy()
	}
}

func (r *recorder) recordApply(u *unstructured.Unstructured, dryRun bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := refOf(u).key()
	switch {
	case dryRun && err == nil:
		r.dryRun[key] = u.DeepCopy()
	case dryRun:
	case err != nil:
		r.writes++
		r.failed[key] = err
	default:
		r.writes++
		r.live[key] = u.DeepCopy()
		r.applied[key] = true
		delete(r.failed, key)
	}
}

// recordingClient is the client ssa's ResourceManager works through, with
// a recorder watching its reads and applies. The poller and Drover's own
// reads use the plain client.
type recordingClient struct {
	client.Client
	rec *recorder
}

func (c *recordingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Client.Get(ctx, key, obj, opts...)
	if u, ok := obj.(*unstructured.Unstructured); ok && err == nil {
		c.rec.recordRead(u)
	}
	return err
}

func (c *recordingClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	err := c.Client.Patch(ctx, obj, patch, opts...)
	if u, ok := obj.(*unstructured.Unstructured); ok && patch.Type() == types.ApplyPatchType {
		po := &client.PatchOptions{}
		po.ApplyOptions(opts)
		c.rec.recordApply(u, len(po.DryRun) > 0, err)
	}
	return err
}

// applyObject server-side applies u, writing the response into it.
func (c *recordingClient) applyObject(ctx context.Context, u *unstructured.Unstructured, opts ...client.ApplyOption) error {
	err := c.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), opts...)
	c.rec.recordApply(u, false, err)
	return err
}

// warningLogger sends the API server's warnings (deprecated APIs, unknown
// fields) to the agent's log instead of controller-runtime's.
type warningLogger struct{ log *slog.Logger }

var _ rest.WarningHandlerWithContext = warningLogger{}

func (w warningLogger) HandleWarningHeaderWithContext(ctx context.Context, code int, _ string, message string) {
	if code != 299 || message == "" {
		return
	}
	w.log.WarnContext(ctx, "kubernetes API warning", "warning", message)
}
