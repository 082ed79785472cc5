package gitwatch

import (
	"context"
	"sync"
)

// keyedMutex is a set of mutexes by key, created on first use and dropped
// when nobody holds or waits for them, so it grows with the keys in use, not
// with every key ever seen. Lock honours ctx while waiting.
type keyedMutex struct {
	mu    sync.Mutex // guards the fields below
	locks map[string]*keyedLock
}

type keyedLock struct {
	ch    chan struct{} // holds one token while locked
	users int           // holders and waiters
}

// Lock waits for key and returns its unlock function, or ctx's error.
func (k *keyedMutex) Lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = make(map[string]*keyedLock)
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()

	select {
	case l.ch <- struct{}{}:
		var once sync.Once
		return func() {
			once.Do(func() {
				<-l.ch
				k.release(key, l)
			})
		}, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

// TryLock locks key only if nobody holds or waits for it.
func (k *keyedMutex) TryLock(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.locks[key] != nil {
		return nil, false
	}
	if k.locks == nil {
		k.locks = make(map[string]*keyedLock)
	}
	l := &keyedLock{ch: make(chan struct{}, 1), users: 1}
	l.ch <- struct{}{}
	k.locks[key] = l
	var once sync.Once
	return func() {
		once.Do(func() {
			<-l.ch
			k.release(key, l)
		})
	}, true
}

func (k *keyedMutex) release(key string, l *keyedLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l.users--
	if l.users == 0 {
		delete(k.locks, key)
	}
}
