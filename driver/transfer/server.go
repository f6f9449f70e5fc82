package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/hashicorp/go-hclog"
)

// Server is a driver's side of the transfers: it serves this node's
// checkpoints to the nodes that fetch them, and receives the checkpoints
// other nodes push to it (see the package documentation).
type Server struct {
	// Checkpoints are where this node's checkpoints may be, looked in in
	// order; Incoming is where it receives pushed ones.
	Checkpoints []string
	Incoming    string
	// Catalog holds the records whose grants authorize requests, and the
	// nodes' endpoints.
	Catalog *catalog.Catalog
	// NodeID returns this node's ID, or "" while it is not known; every
	// checkpoint request is refused until it is.
	NodeID func() string
	// OnPush, if set, is called (in a goroutine of its own) when a push is
	// authorized, e.g. to pull the task's image meanwhile.
	OnPush func(*catalog.Record)
	Logger hclog.Logger
	// Limits bound the server's connections, the stalls of its transfers
	// and the size of the checkpoints it receives; zero fields take their
	// defaults.
	Limits Limits

	mu        sync.Mutex
	receiving map[string]chan struct{}
}

// Serve serves the routes over TLS with conf on ln until ctx ends. It holds
// at most Limits.MaxConnections connections (more wait to be accepted),
// closes one whose TLS handshake and request headers take longer than
// Limits.HeaderTimeout or that carries no request for Limits.KeepAlive,
// and refuses headers larger than 16 KiB.
func (s *Server) Serve(ctx context.Context, ln net.Listener, conf *tls.Config) error {
	limits := s.Limits.withDefaults()
	srv := &http.Server{
		Handler: s.Handler(),
		// Also bounds the TLS handshake. No ReadTimeout or WriteTimeout:
		// a push or a fetch of many GiB takes as long as it takes, and
		// only its stalls are cut (Limits.IdleTimeout).
		ReadHeaderTimeout: limits.HeaderTimeout,
		IdleTimeout:       limits.KeepAlive,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          s.logger().StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	limited := newLimitListener(ln, limits.MaxConnections, s.logger())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(limited, conf)) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

func (s *Server) logger() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger
}

// Handler returns the server's routes, each response written, and each
// push read, under the idle timeout (Limits.IdleTimeout).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /v1/checkpoints/{alloc}/{task}/manifest.json", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, "")
	})
	mux.HandleFunc("GET /v1/checkpoints/{alloc}/{task}/files/{path...}", func(w http.ResponseWriter, r *http.Request) {
		s.serve(w, r, r.PathValue("path"))
	})
	mux.HandleFunc("PUT /v1/checkpoints/{alloc}/{task}", s.receive)
	return idleConn(s.Limits.withDefaults().IdleTimeout, mux)
}

// refusal is a request refused, with the status it gets.
type refusal struct {
	status int
	err    error
}

func (e *refusal) Error() string { return e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

func refuse(status int, format string, args ...any) error {
	return &refusal{status: status, err: fmt.Errorf(format, args...)}
}

// authorize checks a checkpoint request against the grant of its task's
// record: Push grants a push to this node from the record's source, Fetch
// a fetch of this node's checkpoint by the granted node. It returns the
// record and the task's directory under root.
func (s *Server) authorize(r *http.Request, push bool) (*catalog.Record, string, error) {
	alloc, task := r.PathValue("alloc"), r.PathValue("task")
	dir, err := s.dir(alloc, task, push)
	if err != nil {
		return nil, "", refuse(http.StatusBadRequest, "%w", err)
	}
	self := s.NodeID()
	if self == "" {
		return nil, "", refuse(http.StatusServiceUnavailable, "this node's ID is not known yet")
	}
	secret := secretOf(r)
	if secret == "" {
		return nil, "", refuse(http.StatusUnauthorized, "no credential: requests carry the move's credential as \"Authorization: Bearer SECRET\"")
	}
	rec, err := s.Catalog.Get(r.Context(), alloc, task)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, "", refuse(http.StatusForbidden, "no move of %s/%s is recorded", alloc, task)
	}
	if err != nil {
		return nil, "", refuse(http.StatusServiceUnavailable, "read the record of %s/%s: %w", alloc, task, err)
	}
	kind, grant, peer, states := "fetch", rec.Fetch, "", []catalog.State{catalog.StateRestoring}
	if push {
		kind, grant, states = "push", rec.Push, []catalog.State{catalog.StateCheckpointing, catalog.StateReady}
	}
	if grant == nil {
		return nil, "", refuse(http.StatusForbidden, "no %s of %s/%s is granted", kind, alloc, task)
	}
	if !secretMatches(secret, grant.SHA256) {
		return nil, "", refuse(http.StatusForbidden, "the credential is not the one granted for the %s of %s/%s", kind, alloc, task)
	}
	if now := time.Now(); now.After(grant.Expires) {
		return nil, "", refuse(http.StatusForbidden, "the %s credential of %s/%s expired at %s", kind, alloc, task, grant.Expires.Format(time.RFC3339))
	}
	if push {
		if grant.NodeID != self {
			return nil, "", refuse(http.StatusForbidden, "the push of %s/%s is granted to node %s, this is %s", alloc, task, grant.NodeID, self)
		}
		peer = rec.SourceNodeID
	} else {
		if rec.SourceNodeID != self {
			return nil, "", refuse(http.StatusForbidden, "%s/%s was checkpointed on node %s, this is %s", alloc, task, rec.SourceNodeID, self)
		}
		peer = grant.NodeID
	}
	ep, err := s.Catalog.GetEndpoint(r.Context(), peer)
	if err != nil {
		return nil, "", refuse(http.StatusForbidden, "the %s of %s/%s is granted to node %s, whose address is unknown: %w", kind, alloc, task, peer, err)
	}
	if from := remoteHost(r); from != ep.Host() {
		return nil, "", refuse(http.StatusForbidden, "the %s of %s/%s is granted to node %s (%s), the request comes from %s", kind, alloc, task, peer, ep.Host(), from)
	}
	if !slices.Contains(states, rec.State) {
		return nil, "", refuse(http.StatusConflict, "%s/%s is %s, a %s needs it %v", alloc, task, rec.State, kind, states)
	}
	return rec, dir, nil
}

// dir is where a push of alloc's task is received, or where this node has
// its checkpoint.
func (s *Server) dir(alloc, task string, push bool) (string, error) {
	if push {
		return checkpoint.Dir(s.Incoming, alloc, task)
	}
	return checkpoint.Find(s.Checkpoints, alloc, task)
}

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// fail answers a refused or failed request, and logs it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var ref *refusal
	if errors.As(err, &ref) {
		status = ref.status
	}
	s.logger().Warn("checkpoint request refused", "method", r.Method, "path", r.URL.Path,
		"remote_addr", r.RemoteAddr, "status", status, "error", err)
	http.Error(w, err.Error(), status)
}

// serve answers a fetch: the manifest when file is empty, else one file
// the manifest lists.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, file string) {
	_, dir, err := s.authorize(r, false)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if file != "" {
		if err := checkpoint.CheckPath(file); err != nil {
			s.fail(w, r, refuse(http.StatusBadRequest, "%w", err))
			return
		}
	}
	root, err := os.OpenRoot(dir)
	if errors.Is(err, fs.ErrNotExist) {
		s.fail(w, r, refuse(http.StatusNotFound, "no checkpoint of %s/%s on this node", r.PathValue("alloc"), r.PathValue("task")))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer root.Close()
	raw, err := checkpoint.ReadRaw(dir)
	if errors.Is(err, checkpoint.ErrNoManifest) {
		s.fail(w, r, refuse(http.StatusNotFound, "the checkpoint of %s/%s is not complete", r.PathValue("alloc"), r.PathValue("task")))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if file == "" {
		w.Header().Set("Content-Type", "application/json")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(raw))
		return
	}
	m, err := checkpoint.ParseManifest(raw)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	i := slices.IndexFunc(m.Files, func(f checkpoint.File) bool { return f.Path == file })
	if i < 0 {
		s.fail(w, r, refuse(http.StatusNotFound, "%s is not listed in the manifest", file))
		return
	}
	// Stat before opening, so that a FIFO or device never blocks the open;
	// os.Root follows no symlink out of the checkpoint.
	fi, err := root.Lstat(file)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != m.Files[i].Size {
		s.fail(w, r, fmt.Errorf("%s does not match the manifest (%v)", file, err))
		return
	}
	f, err := root.Open(file)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// Received is what a push delivered.
type Received struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
}

// receive takes a push: the frames of the checkpoint of one task, written
// under the incoming directory and checked as they arrive; the manifest
// last. A push refused for its size or for the free space it needs leaves
// nothing behind; one cut or stalled keeps what it brought, unverified, for
// a fetch to resume.
func (s *Server) receive(w http.ResponseWriter, r *http.Request) {
	rec, dir, err := s.authorize(r, true)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	done, err := s.beginReceive(dir)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer done()
	g, err := s.admitPush(dir, rec)
	if sizeRefusal(err) {
		s.refuseSize(w, r, dir, err)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if s.OnPush != nil {
		go s.OnPush(rec)
	}
	start := time.Now()
	got, err := s.receiveInto(r, idleRequestBody(w, r, g.limits.IdleTimeout), dir, rec, g)
	if sizeRefusal(err) {
		s.refuseSize(w, r, dir, err)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.logger().Info("checkpoint received", "alloc_id", rec.AllocID, "task", rec.Task, "from", rec.SourceNodeName,
		"files", got.Files, "bytes", got.Bytes, "duration", time.Since(start))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(got)
}

// drainLimit bounds what a refused push may still send after its
// refusal: what it had in flight when the refusal reached it.
const drainLimit = 64 << 20

// refuseSize answers a push refused for its size or the space it needs,
// after removing what it brought: nothing can complete it here. The source
// is still sending: what it sends until the answer reaches it (and it
// stops) is read and dropped, so that it gets the answer rather than a
// reset connection.
func (s *Server) refuseSize(w http.ResponseWriter, r *http.Request, dir string, err error) {
	if rerr := removeReceived(dir, s.Incoming); rerr != nil {
		s.logger().Warn("remove a refused push", "dir", dir, "error", rerr)
	}
	w.Header().Set("Connection", "close")
	s.fail(w, r, err)
	_ = http.NewResponseController(w).Flush()
	_, _ = io.Copy(io.Discard, io.LimitReader(idleRequestBody(w, r, s.Limits.withDefaults().IdleTimeout), drainLimit))
}

func (s *Server) receiveInto(r *http.Request, body io.Reader, dir string, rec *catalog.Record, g *pushGuard) (*Received, error) {
	// A manifest left from an earlier push would vouch for what this one
	// has not verified yet.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Remove(filepath.Join(dir, checkpoint.ManifestName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	rc := newReceiver(root)
	defer rc.close()
	// Reading (and decrypting) the next frames overlaps writing and
	// hashing this one.
	frames := make(chan inFrame, 8)
	stop := make(chan struct{})
	defer close(stop)
	go readFrames(bufio.NewReaderSize(body, 1<<20), frames, stop)
	for in := range frames {
		if errors.Is(in.err, ErrStalled) {
			return nil, refuse(http.StatusRequestTimeout, "%w", in.err)
		}
		if in.err != nil {
			return nil, refuse(http.StatusBadRequest, "%w", in.err)
		}
		if in.f.kind == frameManifest {
			return s.finishReceive(r.Context(), dir, rec, rc, *in.buf)
		}
		if err := g.admit(rc.bytes, int64(len(*in.buf))); err != nil {
			putChunk(in.buf)
			return nil, err
		}
		err := rc.write(in.f, *in.buf)
		putChunk(in.buf)
		if errors.Is(err, syscall.ENOSPC) {
			return nil, refuse(http.StatusInsufficientStorage, "%w: writing %s: %w", ErrNoSpace, in.f.path, err)
		}
		if err != nil {
			return nil, refuse(http.StatusBadRequest, "%w", err)
		}
	}
	return nil, refuse(http.StatusBadRequest, "the push ended without a manifest")
}

// inFrame is a frame read from a push, or the error that ends the push.
type inFrame struct {
	f   frame
	buf *[]byte
	err error
}

// readFrames reads the frames of a push body into out until the manifest,
// an error, or stop; it closes out.
func readFrames(body io.Reader, out chan<- inFrame, stop <-chan struct{}) {
	defer close(out)
	send := func(in inFrame) bool {
		select {
		case out <- in:
			return true
		case <-stop:
			return false
		}
	}
	for {
		f, err := readFrameHeader(body)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			send(inFrame{err: err})
			return
		}
		buf := getChunk(int(f.length))
		*buf = (*buf)[:f.length]
		if _, err := io.ReadFull(body, *buf); err != nil {
			putChunk(buf)
			send(inFrame{err: fmt.Errorf("frame of %q: %w", f.path, err)})
			return
		}
		if !send(inFrame{f: f, buf: buf}) || f.kind == frameManifest {
			return
		}
	}
}

// finishReceive checks the pushed manifest against the digest the source
// recorded before reading it, then every file against it, and only then
// writes it.
func (s *Server) finishReceive(ctx context.Context, dir string, rec *catalog.Record, rc *receiver, raw []byte) (*Received, error) {
	cur, err := s.Catalog.Get(ctx, rec.AllocID, rec.Task)
	if err != nil {
		return nil, refuse(http.StatusServiceUnavailable, "read the record of %s/%s: %w", rec.AllocID, rec.Task, err)
	}
	if cur.Bytes > 0 && rc.bytes > cur.Bytes {
		return nil, refuse(http.StatusRequestEntityTooLarge, "%w: the push brought %d bytes, its record announces %d",
			ErrTooLarge, rc.bytes, cur.Bytes)
	}
	if cur.ManifestSHA256 == "" || checkpoint.Digest(raw) != cur.ManifestSHA256 {
		return nil, refuse(http.StatusUnprocessableEntity, "the manifest's sha256 %s is not the one the source recorded (%q): refusing the checkpoint",
			checkpoint.Digest(raw), cur.ManifestSHA256)
	}
	m, err := checkpoint.ParseManifest(raw)
	if err != nil {
		return nil, refuse(http.StatusUnprocessableEntity, "%w", err)
	}
	if err := rc.verify(m); err != nil {
		return nil, refuse(http.StatusUnprocessableEntity, "%w", err)
	}
	if err := rc.close(); err != nil {
		return nil, err
	}
	if err := checkpoint.WriteManifest(dir, raw); err != nil {
		return nil, err
	}
	return &Received{Files: len(m.Files), Bytes: rc.bytes}, nil
}

// beginReceive marks dir as being received into, refusing a second push
// of the same task meanwhile; done ends the mark.
func (s *Server) beginReceive(dir string) (done func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.receiving == nil {
		s.receiving = make(map[string]chan struct{})
	}
	if _, busy := s.receiving[dir]; busy {
		return nil, refuse(http.StatusConflict, "a push of this checkpoint is already being received")
	}
	ch := make(chan struct{})
	s.receiving[dir] = ch
	return func() {
		s.mu.Lock()
		delete(s.receiving, dir)
		s.mu.Unlock()
		close(ch)
	}, nil
}

// WaitReceived waits until no push into dir (under Incoming) is being
// received, or ctx ends.
func (s *Server) WaitReceived(ctx context.Context, dir string) error {
	s.mu.Lock()
	ch := s.receiving[dir]
	s.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Receiving reports whether a push into dir is being received.
func (s *Server) Receiving(dir string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, busy := s.receiving[dir]
	return busy
}
