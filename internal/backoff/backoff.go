// Package backoff is the one retry delay of Drover's hub and agent: capped,
// jittered exponential backoff that resets after a success. Every reconnect
// and retry loop has the same shape:
//
//	b := backoff.New(time.Second, time.Minute)
//	for {
//		err := session(ctx)
//		if ctx.Err() != nil {
//			return
//		}
//		b.Wait(ctx, err)
//	}
//
// A session that ran long enough to count as healthy calls Reset, or passes a
// nil error to Wait, so the next failure starts from the base delay again.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes delays of base·2^n, capped at max, with full jitter over
// the upper half (so a fleet that failed together does not retry together).
// A Backoff is not safe for concurrent use; each loop owns one.
type Backoff struct {
	base, max time.Duration
	failures  int
}

// New returns a Backoff whose delays grow from base to at most max.
func New(base, max time.Duration) *Backoff {
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if max < base {
		max = base
	}
	return &Backoff{base: base, max: max}
}

// Next returns the delay before the next attempt and counts one failure.
func (b *Backoff) Next() time.Duration {
	d := b.max
	// Beyond 2^30 the shift would overflow; the cap is long reached by then.
	if b.failures < 30 {
		if e := b.base << b.failures; e > 0 && e < b.max {
			d = e
		}
	}
	b.failures++
	half := d / 2
	return half + rand.N(d-half+1)
}

// Reset forgets the failures, so the next delay is near base again.
func (b *Backoff) Reset() { b.failures = 0 }

// Failures is the number of consecutive failures counted since the last
// Reset.
func (b *Backoff) Failures() int { return b.failures }

// Wait sleeps for the next delay, or returns early when ctx ends. A nil err
// means the attempt succeeded: the backoff resets and Wait waits only the
// base delay, so a loop whose sessions end cleanly does not spin.
func (b *Backoff) Wait(ctx context.Context, err error) { b.WaitHint(ctx, err, 0) }

// WaitHint is Wait after a failure whose server said when to come back (a
// gRPC RetryInfo, an HTTP Retry-After): a hint above zero sets the least
// the wait is, spread by ±10% so the clients it refused together do not
// return together.
func (b *Backoff) WaitHint(ctx context.Context, err error, hint time.Duration) {
	t := time.NewTimer(b.delay(err, hint))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// delay is the wait before the next attempt, after one that ended with err.
func (b *Backoff) delay(err error, hint time.Duration) time.Duration {
	if err == nil {
		b.Reset()
		return b.base
	}
	d := b.Next()
	if hint > 0 {
		d = max(d, Jitter(hint, 0.1))
	}
	return d
}

// Jitter returns d spread uniformly by ±fraction (0.1 = ±10%), for periodic
// jobs (heartbeats, polls, resyncs) that a fleet must not run in lockstep.
func Jitter(d time.Duration, fraction float64) time.Duration {
	if d <= 0 || fraction <= 0 {
		return d
	}
	spread := time.Duration(float64(d) * fraction)
	if spread <= 0 {
		return d
	}
	return d - spread + rand.N(2*spread+1)
}
