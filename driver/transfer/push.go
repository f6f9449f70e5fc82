package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
)

// Push streams one task's checkpoint to the driver that will restore it,
// while it is written: it is the checkpoint.Sink of checkpoint.Create,
// then Finish sends the manifest. Write queues the frames; the request
// sends them from a goroutine of its own, so that reading and hashing the
// files overlaps encrypting and sending them. A Push that failed keeps
// failing; the destination then fetches the checkpoint instead.
type Push struct {
	q      *chunkQueue
	cancel context.CancelCauseFunc
	idle   *idleTimer
	closed bool
	once   sync.Once
	done   chan struct{}
	resp   *Received
	err    error
}

var _ checkpoint.Sink = (*Push)(nil)

// errAborted is the cause of a push's end by Abort.
var errAborted = errors.New("push aborted by the source")

// StartPush opens the push of alloc's task to the driver at address
// ("host:port"), presenting secret, the credential of the record's Push
// grant. The request runs until Finish or Abort, or until ctx ends; it
// fails with ErrStalled when the destination reads nothing for the idle
// timeout (WithLimits; DefaultIdleTimeout) while there is something to
// send, or does not answer within it once all was sent. The time the
// checkpoint takes to be dumped never counts: a push has no deadline but
// ctx's.
func StartPush(ctx context.Context, client *http.Client, address, secret, alloc, task string, opts ...Option) *Push {
	o := optionsOf(opts)
	ctx, cancel := context.WithCancelCause(ctx)
	p := &Push{cancel: cancel, done: make(chan struct{})}
	d := o.limits.IdleTimeout
	// Armed from the start: connecting and sending the headers count.
	p.idle = newIdleTimer(d, func() {
		err := stalled("the destination read nothing", d)
		p.end(nil, err)
		cancel(err)
	})
	p.q = newChunkQueue(p.done, p.idle)
	u := url.URL{Scheme: "https", Host: address, Path: "/v1/checkpoints/" + url.PathEscape(alloc) + "/" + url.PathEscape(task)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), p.q)
	if err != nil {
		p.end(nil, err)
		return p
	}
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	setSecret(req.Header, secret)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			p.end(nil, causeOf(ctx, err))
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			p.end(nil, statusError(resp))
			return
		}
		var got Received
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&got); err != nil {
			p.end(nil, fmt.Errorf("read the destination's answer: %w", causeOf(ctx, err)))
			return
		}
		p.end(&got, nil)
	}()
	return p
}

// causeOf returns why ctx ended when err comes from its end and the
// cause says more (a stall), else err.
func causeOf(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) && errors.Is(cause, ErrStalled) {
		return cause
	}
	return err
}

// statusError reads a refusal's message.
func statusError(resp *http.Response) error {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	err := fmt.Errorf("destination answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrRefused, err)
	case http.StatusRequestEntityTooLarge:
		return &kindError{kind: ErrTooLarge, err: err}
	case http.StatusInsufficientStorage:
		return &kindError{kind: ErrNoSpace, err: err}
	case http.StatusRequestTimeout:
		return &kindError{kind: ErrStalled, err: err}
	}
	return err
}

// kindError is an error that is also kind (errors.Is), whose message
// (the other node's) says so already.
type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

func (p *Push) end(resp *Received, err error) {
	p.once.Do(func() {
		p.idle.stop()
		p.resp, p.err = resp, err
		close(p.done)
	})
}

// failed returns why the push's request ended without success.
func (p *Push) failed() error {
	if p.err != nil {
		return p.err
	}
	return errors.New("the destination answered before the end of the push")
}

// queue hands one frame to the request, waiting for a free slot.
func (p *Push) queue(f frame, data []byte) error {
	if p.closed {
		return errors.New("push already ended")
	}
	buf := getChunk(frameHeader + len(f.path) + len(data))
	*buf = appendFrameHeader(*buf, f)
	*buf = append(*buf, data...)
	select {
	case p.q.ch <- queued{buf: buf}:
		return nil
	case <-p.done:
		putChunk(buf)
		return p.failed()
	}
}

// Write sends bytes of the checkpoint file path, from offset off. A
// write of nothing at offset 0 sends the file's first frame, empty: how an
// empty file travels.
func (p *Push) Write(path string, off int64, b []byte) error {
	for first := off == 0; len(b) > 0 || first; first = false {
		n := min(len(b), maxFrame)
		if err := p.queue(frame{kind: frameFile, path: path, offset: off, length: int64(n)}, b[:n]); err != nil {
			return err
		}
		off += int64(n)
		b = b[n:]
	}
	return nil
}

// Finish sends the manifest, ending the push, and waits until the
// destination has checked everything against it and kept the checkpoint.
func (p *Push) Finish(ctx context.Context, manifest []byte) (*Received, error) {
	if err := p.queue(frame{kind: frameManifest, length: int64(len(manifest))}, manifest); err != nil {
		return nil, err
	}
	p.closed = true
	close(p.q.ch)
	select {
	case <-p.done:
		if p.err != nil {
			return nil, p.err
		}
		return p.resp, nil
	case <-ctx.Done():
		p.cancel(ctx.Err())
		return nil, ctx.Err()
	}
}

// Abort ends the push without a manifest: the destination keeps what it
// received, unverified, for a fetch to resume. It waits, briefly, for the
// request to end.
func (p *Push) Abort(error) {
	p.cancel(errAborted)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}
