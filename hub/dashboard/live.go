package dashboard

import (
	"net/http"
	"sync"
	"time"
)

// broker fans a coalesced "something changed" tick out to the open live
// streams. notify never blocks: however often the hub calls it, each
// stream hears at most one tick per interval, the last one after the last
// change.
type broker struct {
	interval time.Duration

	mu      sync.Mutex // guards the fields below
	subs    map[chan struct{}]struct{}
	timer   *time.Timer // pending tick, nil when none
	last    time.Time   // when the last tick went out
	closed  bool
	closing chan struct{}
}

func newBroker(interval time.Duration) *broker {
	return &broker{interval: interval, subs: map[chan struct{}]struct{}{}, closing: make(chan struct{})}
}

func (b *broker) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer != nil || b.closed {
		return // a tick is already due; it will cover this change
	}
	wait := b.interval - time.Since(b.last)
	b.timer = time.AfterFunc(max(wait, 0), b.tick)
}

func (b *broker) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer = nil
	b.last = time.Now()
	for ch := range b.subs {
		select {
		case ch <- struct{}{}:
		default: // this stream has a tick waiting already
		}
	}
}

// subscribe returns a channel that receives ticks, and a function that
// ends the subscription.
func (b *broker) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}
}

func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.closing)
		if b.timer != nil {
			b.timer.Stop()
		}
	}
}

// stream is the server-sent-events endpoint. It sends "change" when the hub
// reports a change, and every RefreshInterval regardless, so relative times
// move on and clusters that went silent show as offline.
func (d *Dashboard) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	ticks, stop := d.live.subscribe()
	defer stop()
	refresh := time.NewTicker(d.cfg.RefreshInterval)
	defer refresh.Stop()
	// retry: how long the browser waits before reconnecting.
	if _, err := w.Write([]byte("retry: 2000\n: live\n\n")); err != nil {
		return
	}
	if err := rc.Flush(); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-d.live.closing:
			return
		case <-ticks:
		case <-refresh.C:
		}
		if _, err := w.Write([]byte("event: change\ndata: 1\n\n")); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
