package agentapi

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/drover-dev/drover/internal/backoff"
)

// admission bounds the work that arriving agents bring at once: the
// registrations and the initial syncs of new streams (certificate check,
// connection record), each a few database round trips.
// After a hub restart every agent arrives within seconds; without a bound
// they would all wait on the database pool at once, time out together and
// come back together. A caller that finds no slot within the wait is
// refused with ResourceExhausted and a retry delay (RetryInfo) that the
// agent honours, so the storm is spread instead of queued in memory.
type admission struct {
	slots chan struct{}
	// wait is how long a caller queues for a slot before it is refused.
	wait time.Duration
	// retryAfter is the delay suggested to refused callers, jittered.
	retryAfter time.Duration
}

func newAdmission(slots int, wait, retryAfter time.Duration) *admission {
	return &admission{slots: make(chan struct{}, slots), wait: wait, retryAfter: retryAfter}
}

// acquire takes a slot, waiting at most a.wait. The caller calls release
// exactly once when its expensive part is done.
func (a *admission) acquire(ctx context.Context) (release func(), err error) {
	if takeSlot(a.slots, a.wait, ctx.Done()) {
		return a.release, nil
	}
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return nil, a.refusal()
}

// takeSlot puts a token into slots, waiting at most wait or until done is
// closed (a nil done never is). It reports whether it did.
func takeSlot(slots chan struct{}, wait time.Duration, done <-chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-done:
	case <-t.C:
	}
	return false
}

func (a *admission) release() { <-a.slots }

// refusal is the error of a caller that found no slot. The delay is
// jittered here too, so that even agents that do not add their own jitter
// come back spread out.
func (a *admission) refusal() error {
	return retryLater(codes.ResourceExhausted, "the hub is admitting other agents; retry in %v", a.retryAfter)
}

// retryLater is an error with code that asks the agent to come back after
// about d (jittered by ±50%, so that the agents told together do not return
// together), as a gRPC RetryInfo the agent honours; format says so in
// words with the delay as its one argument.
func retryLater(code codes.Code, format string, d time.Duration) error {
	d = backoff.Jitter(d, 0.5)
	st := status.New(code, fmt.Sprintf(format, d.Round(time.Millisecond)))
	if withHint, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
		st = withHint
	}
	return st.Err()
}
