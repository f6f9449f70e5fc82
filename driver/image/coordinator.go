package image

import (
	"context"
	"errors"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// errClosed is returned by operations on a closed Store.
var errClosed = errors.New("image store is closed")

// flight is one pull shared by every caller asking for the same reference
// and platform at the same time. It runs detached from any single caller and
// is cancelled when the last caller gives up or the store closes.
type flight struct {
	done   chan struct{}
	cancel context.CancelFunc

	// Guarded by Store.mu.
	waiters  int
	progress map[int]func(string)
	nextID   int

	// deliver serialises progress callbacks: layers download in parallel.
	deliver sync.Mutex

	// Set before done is closed.
	img *Image
	err error
}

// join runs pull once per key, however many callers ask concurrently, and
// waits for its result or for ctx to end.
func (s *Store) join(ctx context.Context, key string, progress func(string), pull func(ctx context.Context, progress func(string)) (*Image, error)) (*Image, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	f := s.flights[key]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(s.ctx, cancel)
		f = &flight{done: make(chan struct{}), cancel: cancel, progress: map[int]func(string){}}
		s.flights[key] = f
		go func() {
			img, err := pull(fctx, func(msg string) { s.broadcast(f, msg) })
			stop()
			cancel()
			if err != nil && s.ctx.Err() != nil {
				err = errClosed
			}
			s.mu.Lock()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
			f.img, f.err = img, err
			s.mu.Unlock()
			close(f.done)
		}()
	} else {
		s.logger.Debug("joining pull in progress", "key", key)
	}
	f.waiters++
	id := f.nextID
	f.nextID++
	if progress != nil {
		f.progress[id] = progress
	}
	s.mu.Unlock()

	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return f.img.clone(), nil
	case <-ctx.Done():
		s.mu.Lock()
		f.waiters--
		delete(f.progress, id)
		if f.waiters == 0 {
			// Nobody wants the result any more; a later caller starts
			// afresh, reusing the blobs downloaded so far unless a
			// removal swept them in the meantime.
			f.cancel()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
		}
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

// broadcast passes a progress line to every caller waiting on f, one line
// at a time.
func (s *Store) broadcast(f *flight, msg string) {
	f.deliver.Lock()
	defer f.deliver.Unlock()
	s.mu.Lock()
	fns := make([]func(string), 0, len(f.progress))
	for _, fn := range f.progress {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(msg)
	}
}

// removalTimer is a pending removal; the timer's callback compares its
// pointer with the current entry to detect that it was cancelled.
type removalTimer struct {
	t *time.Timer
}

// pin marks a manifest digest as used by a pull so that it is not removed
// underneath it. Only one pin holder at a time may build the image (see
// lock).
type pin struct {
	n   int
	sem chan struct{}
}

// pinImage waits for a removal of d in progress to finish, cancels a pending
// removal and pins d. The returned function unpins it.
func (s *Store) pinImage(ctx context.Context, d v1.Hash) (*pin, func(), error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, nil, errClosed
		}
		removing := s.removing[d]
		if removing == nil {
			break
		}
		s.mu.Unlock()
		select {
		case <-removing:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	defer s.mu.Unlock()
	p := s.pins[d]
	if p == nil {
		p = &pin{sem: make(chan struct{}, 1)}
		s.pins[d] = p
	}
	p.n++
	s.cancelRemovalLocked(d)
	return p, func() { s.unpinImage(d, p) }, nil
}

func (s *Store) unpinImage(d v1.Hash, p *pin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.n--
	if p.n > 0 {
		return
	}
	delete(s.pins, d)
	// A pulled image nobody acquires is collected like a released one,
	// after at least pullGrace so the caller has time to Acquire it.
	if _, ok := s.images[d]; ok && s.refs[d] == 0 {
		s.scheduleRemovalLocked(d, max(s.gcDelay, s.pullGrace))
	}
}

// lock serialises building one image; it gives up when ctx ends.
func (p *pin) lock(ctx context.Context) (func(), error) {
	select {
	case p.sem <- struct{}{}:
		return func() { <-p.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pinBlobs protects blobs a pull relies on from removal until the returned
// function runs.
func (s *Store) pinBlobs(ds ...v1.Hash) func() {
	s.mu.Lock()
	for _, d := range ds {
		s.blobPins[d]++
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, d := range ds {
			if s.blobPins[d]--; s.blobPins[d] <= 0 {
				delete(s.blobPins, d)
			}
		}
	}
}

// Acquire records that a task uses the image with manifest digest d and
// cancels its pending removal.
func (s *Store) Acquire(d v1.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[d]++
	s.cancelRemovalLocked(d)
	s.logger.Trace("image acquired", "digest", d, "refs", s.refs[d])
}

// Release records that a task stopped using the image. When no task uses it
// any more, it is removed after the GC delay (if GC is enabled) unless it is
// acquired or pulled again in the meantime.
func (s *Store) Release(d v1.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.refs[d]
	if !ok || n <= 0 {
		s.logger.Warn("image released more often than acquired", "digest", d)
		return
	}
	n--
	s.logger.Trace("image released", "digest", d, "refs", n)
	if n > 0 {
		s.refs[d] = n
		return
	}
	delete(s.refs, d)
	if s.pins[d] == nil {
		s.scheduleRemovalLocked(d, s.gcDelay)
	}
}

// scheduleRemovalLocked (re)starts the removal timer of an unused image.
func (s *Store) scheduleRemovalLocked(d v1.Hash, delay time.Duration) {
	if !s.gcEnabled || s.closed {
		return
	}
	if _, ok := s.images[d]; !ok {
		return
	}
	s.cancelRemovalLocked(d)
	rt := &removalTimer{}
	rt.t = time.AfterFunc(delay, func() { s.collect(d, rt) })
	s.timers[d] = rt
	s.logger.Debug("image removal scheduled", "digest", d, "delay", delay)
}

// cancelRemovalLocked stops a pending removal. A timer that already fired
// notices it is no longer current and does nothing.
func (s *Store) cancelRemovalLocked(d v1.Hash) {
	if rt, ok := s.timers[d]; ok {
		rt.t.Stop()
		delete(s.timers, d)
		s.logger.Trace("image removal cancelled", "digest", d)
	}
}
