package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// ErrStalled: the other node sent or read nothing for the idle timeout
// (Limits.IdleTimeout).
var ErrStalled = errors.New("transfer stalled")

// stalled is the error of a transfer whose peer did nothing for d.
func stalled(who string, d time.Duration) error {
	return fmt.Errorf("%w: %s for %s (transfer idle_timeout)", ErrStalled, who, d)
}

// idleTimer calls fire once it runs out: armed while the transfer waits
// for its peer, stopped while it waits for anything else (its own disk, or
// the checkpoint being dumped), so that only the peer's stalls count.
type idleTimer struct {
	d time.Duration
	t *time.Timer
}

// newIdleTimer returns a timer of d, armed.
func newIdleTimer(d time.Duration, fire func()) *idleTimer {
	return &idleTimer{d: d, t: time.AfterFunc(d, fire)}
}

func (it *idleTimer) arm() {
	if it != nil {
		it.t.Reset(it.d)
	}
}

func (it *idleTimer) stop() {
	if it != nil {
		it.t.Stop()
	}
}

// idleBody is the body of a response the fetching node reads: each read
// must bring something within the idle timeout, or the request's context
// ends with the stall as its cause.
type idleBody struct {
	body   io.ReadCloser
	timer  *idleTimer
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.arm()
	n, err := b.body.Read(p)
	b.timer.stop()
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, ErrStalled) {
			err = cause
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.stop()
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// idleConn is the server's side of the idle timeout for responses: every
// write must make progress within it, enforced by the connection's write
// deadline, set before each write and so never counting the time the
// handler spends on its own work. (A push's body is read under
// idleRequestBody; the request's Body itself stays the server's, which
// looks at it to decide what to do with what a handler left unread.)
func idleConn(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A deadline left from the connection's last request must not cut
		// this one.
		_ = rc.SetWriteDeadline(time.Time{})
		// What the handler leaves buffered is flushed after it returns.
		defer func() { _ = rc.SetWriteDeadline(time.Now().Add(d)) }()
		next.ServeHTTP(&idleWriter{ResponseWriter: w, rc: rc, d: d}, r)
	})
}

// idleRequestBody returns r's body, each read of which must bring
// something within d, enforced by the connection's read deadline.
func idleRequestBody(w http.ResponseWriter, r *http.Request, d time.Duration) io.Reader {
	return &idleReader{body: r.Body, rc: http.NewResponseController(w), d: d}
}

// idleReader sets the connection's read deadline before each read of a
// request's body.
type idleReader struct {
	body io.Reader
	rc   *http.ResponseController
	d    time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	_ = r.rc.SetReadDeadline(time.Now().Add(r.d))
	n, err := r.body.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = stalled("the other node sent nothing", r.d)
	}
	return n, err
}

// idleWriter sets the connection's write deadline before each write of a
// response.
type idleWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (w *idleWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	return w.ResponseWriter.Write(p)
}

func (w *idleWriter) WriteHeader(status int) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
