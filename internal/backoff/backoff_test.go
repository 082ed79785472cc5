package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNextGrowsAndCaps(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	wantCeil := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, ceil := range wantCeil {
		ceil *= time.Millisecond
		d := b.Next()
		if d < ceil/2 || d > ceil {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", i, d, ceil/2, ceil)
		}
	}
	if b.Failures() != len(wantCeil) {
		t.Fatalf("failures = %d, want %d", b.Failures(), len(wantCeil))
	}
}

func TestNoOverflowAfterManyFailures(t *testing.T) {
	b := New(time.Second, 30*time.Second)
	for i := 0; i < 200; i++ {
		if d := b.Next(); d <= 0 || d > 30*time.Second {
			t.Fatalf("attempt %d: delay %v outside (0, 30s]", i, d)
		}
	}
}

func TestResetStartsOver(t *testing.T) {
	b := New(10*time.Millisecond, time.Hour)
	for i := 0; i < 10; i++ {
		b.Next()
	}
	b.Reset()
	if d := b.Next(); d > 10*time.Millisecond {
		t.Fatalf("after Reset delay %v, want at most 10ms", d)
	}
}

func TestWaitReturnsWhenContextEnds(t *testing.T) {
	b := New(time.Hour, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { b.Wait(ctx, errors.New("boom")); close(done) }()
	<-done // would block for an hour if Wait ignored ctx
}

func TestWaitWithNilErrorResets(t *testing.T) {
	b := New(time.Millisecond, time.Hour)
	for i := 0; i < 5; i++ {
		b.Next()
	}
	b.Wait(context.Background(), nil)
	if b.Failures() != 0 {
		t.Fatalf("failures after a success = %d, want 0", b.Failures())
	}
}

func TestJitterStaysInRange(t *testing.T) {
	for i := 0; i < 1000; i++ {
		d := Jitter(10*time.Second, 0.1)
		if d < 9*time.Second || d > 11*time.Second {
			t.Fatalf("Jitter(10s, 0.1) = %v, outside [9s, 11s]", d)
		}
	}
	if d := Jitter(0, 0.1); d != 0 {
		t.Fatalf("Jitter(0) = %v, want 0", d)
	}
}

// A server's hint sets the least of the next wait; the backoff still
// counts the failure, and a success resets it.
func TestDelayHonoursHint(t *testing.T) {
	b := New(time.Millisecond, 10*time.Millisecond)
	failed := errors.New("refused")
	if d := b.delay(failed, time.Hour); d < 54*time.Minute || d > 66*time.Minute {
		t.Fatalf("delay with a 1h hint = %v, want 1h ±10%%", d)
	}
	if d := b.delay(failed, 0); d > 10*time.Millisecond {
		t.Fatalf("delay without a hint = %v, want at most the cap", d)
	}
	if b.Failures() != 2 {
		t.Fatalf("failures = %d, want 2", b.Failures())
	}
	if d := b.delay(nil, time.Hour); d != time.Millisecond || b.Failures() != 0 {
		t.Fatalf("after a success: delay %v, failures %d; want the base and 0", d, b.Failures())
	}
}
