package transfer

import (
	"errors"
	"io"
	"sync"
)

// chunkSize is the size of the buffers a push moves its frames in; most
// frames are one read of the checkpoint's files (1 MiB) and a header.
const chunkSize = 1<<20 + 4096

var chunks = sync.Pool{New: func() any {
	b := make([]byte, 0, chunkSize)
	return &b
}}

// getChunk returns an empty buffer of capacity n or more.
func getChunk(n int) *[]byte {
	b := chunks.Get().(*[]byte)
	if cap(*b) < n {
		*b = make([]byte, 0, n)
	}
	*b = (*b)[:0]
	return b
}

func putChunk(b *[]byte) {
	if cap(*b) <= 4*chunkSize {
		chunks.Put(b)
	}
}

// queued is one item of a chunkQueue: a buffer, or the error that ends it.
type queued struct {
	buf *[]byte
	err error
}

// chunkQueue hands buffers from a producer to a consumer through a few
// slots, so that the two run on different cores: the producer hashing the
// next part of a file while the consumer encrypts and sends this one, or
// the consumer hashing and writing while the producer decrypts.
type chunkQueue struct {
	ch   chan queued
	cur  *[]byte
	off  int
	done error
	// stop, closed, ends a Read waiting for the producer: the consumer
	// gave up.
	stop <-chan struct{}
	// idle, when set, is armed while the consumer is away from Read,
	// i.e. sending what it read: a push's stall is its destination
	// reading nothing, never its source producing nothing.
	idle *idleTimer
}

func newChunkQueue(stop <-chan struct{}, idle *idleTimer) *chunkQueue {
	return &chunkQueue{ch: make(chan queued, 8), stop: stop, idle: idle}
}

// errQueueStopped ends the reads of a queue whose consumer gave up.
var errQueueStopped = errors.New("push ended")

// Read makes the queue the body of a request: it returns the queued
// buffers' bytes, then io.EOF once closed, or the error it was closed with.
func (q *chunkQueue) Read(p []byte) (int, error) {
	q.idle.stop()
	defer q.idle.arm()
	for q.cur == nil || q.off == len(*q.cur) {
		if q.cur != nil {
			putChunk(q.cur)
			q.cur = nil
		}
		if q.done != nil {
			return 0, q.done
		}
		var item queued
		var ok bool
		select {
		case item, ok = <-q.ch:
		case <-q.stop:
			item, ok = queued{err: errQueueStopped}, true
		}
		switch {
		case !ok:
			q.done = io.EOF
		case item.err != nil:
			q.done = item.err
		default:
			q.cur, q.off = item.buf, 0
		}
	}
	n := copy(p, (*q.cur)[q.off:])
	q.off += n
	return n, nil
}
