package transfer

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/hashicorp/go-hclog"
)

const (
	// fetchAttempts is how many times one request is tried when the
	// network, not the data, fails.
	fetchAttempts = 3
	// retryDelay grows linearly with each retry.
	retryDelay = 250 * time.Millisecond
	// copyBufferSize is the buffer streaming a file to disk.
	copyBufferSize = 1 << 20
)

var (
	// ErrRefused: the other driver refused the credential.
	ErrRefused = errors.New("refused by the other node's driver")
	// ErrNotFound: the source has no such checkpoint or file.
	ErrNotFound = errors.New("not found on the source")
	// ErrDigest: the manifest is not the one the source recorded.
	ErrDigest = errors.New("manifest does not match the digest in the record")
)

// retryableError marks a failure of the network or of an overloaded source,
// worth trying again.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// Fetch downloads the checkpoint of alloc's task from the driver at address
// ("host:port") into dest, presenting secret, the credential of the
// record's Fetch grant. digest is the manifest's sha256 from the record:
// the manifest is checked against it before it is read. Every file is
// hashed while it streams to disk and checked against the manifest; a file
// a cut push left in dest is hashed and resumed with a Range request (and
// fetched again whole if it turns out wrong); files the manifest does not
// list are removed. The manifest is written last, so dest holds one only
// when all of the checkpoint is there and verified. Nothing is synced.
//
// A request failing on the network (or with 502, 503, 504, 429) is retried
// a couple of times; a refused credential (ErrRefused), a missing
// checkpoint (ErrNotFound), a manifest that is not the recorded one
// (ErrDigest) or a file that does not match the manifest
// (*checkpoint.FileError) is not. A request whose source sends nothing for
// the idle timeout (WithLimits; DefaultIdleTimeout) fails with ErrStalled
// and is retried like a network failure, resuming where it stopped; a
// fetch has no deadline but ctx's.
//
// Before a byte is downloaded, the checkpoint the manifest describes must
// fit: no larger than Limits.MaxCheckpointSize (else ErrTooLarge), and,
// less what dest holds already, within the free space of dest's
// filesystem less Limits.MinFreeSpace (else ErrNoSpace). Refused for its
// size, or when the filesystem fills up nonetheless, the fetch removes
// dest and what it left: nothing can complete it there. It returns the
// bytes it downloaded.
func Fetch(ctx context.Context, client *http.Client, address, secret, alloc, task, digest, dest string, logger hclog.Logger, opts ...Option) (int64, error) {
	o := optionsOf(opts)
	wrap := func(err error) error {
		return fmt.Errorf("fetch %s/%s from %s: %w", alloc, task, address, err)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if secret == "" || digest == "" || dest == "" {
		return 0, wrap(errors.New("no credential, digest or destination directory"))
	}
	if _, err := checkpoint.Dir(dest, alloc, task); err != nil {
		return 0, wrap(err)
	}
	f := &fetcher{client: client, base: url.URL{Scheme: "https", Host: address}, secret: secret, alloc: alloc, task: task,
		logger: logger.With("alloc_id", alloc, "task", task, "source", address), buf: make([]byte, copyBufferSize),
		idle: o.limits.IdleTimeout}

	start := time.Now()
	var raw []byte
	err := f.retry(ctx, checkpoint.ManifestName, func() error {
		var err error
		raw, err = f.getManifest(ctx)
		return err
	})
	if err != nil {
		return 0, wrap(err)
	}
	if got := checkpoint.Digest(raw); got != digest {
		return 0, wrap(fmt.Errorf("%w: sha256 %s, the record says %s; refusing the checkpoint", ErrDigest, got, digest))
	}
	m, err := checkpoint.ParseManifest(raw)
	if err != nil {
		return 0, wrap(err)
	}
	// A refusal removes dest, and the directories made for it, or the
	// allocation's of a checkpoint directory (checkpoint.Dir) left empty.
	keep := existingAncestor(filepath.Dir(dest))
	if parent := filepath.Dir(dest); filepath.Base(dest) == task && filepath.Base(parent) == alloc && len(filepath.Dir(parent)) < len(keep) {
		keep = filepath.Dir(parent)
	}
	refused := func(err error) error {
		if rerr := removeReceived(dest, keep); rerr != nil {
			f.logger.Warn("remove a refused checkpoint", "dir", dest, "error", rerr)
		}
		return wrap(err)
	}
	if err := fits(dest, keep, m, o.limits); sizeRefusal(err) {
		return 0, refused(err)
	} else if err != nil {
		return 0, wrap(err)
	}
	if err := os.MkdirAll(dest, 0o700); err != nil {
		return 0, wrap(err)
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return 0, wrap(err)
	}
	defer root.Close()
	if err := root.Remove(checkpoint.ManifestName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, wrap(err)
	}
	if err := removeUnlisted(dest, m); err != nil {
		return 0, wrap(err)
	}
	var total int64
	for _, file := range m.Files {
		n, err := f.file(ctx, root, file)
		total += n
		if errors.Is(err, syscall.ENOSPC) {
			return total, refused(fmt.Errorf("%w: %w", ErrNoSpace, err))
		}
		if err != nil {
			return total, wrap(err)
		}
	}
	if err := checkpoint.WriteManifest(dest, raw); err != nil {
		return total, wrap(err)
	}
	elapsed := time.Since(start)
	f.logger.Info("checkpoint fetched", "files", len(m.Files), "bytes", total, "duration", elapsed,
		"mib_per_s", fmt.Sprintf("%.1f", float64(total)/(1<<20)/max(elapsed.Seconds(), 1e-6)))
	return total, nil
}

// fits checks that the checkpoint m describes may be fetched into dest:
// no larger than limits allow, and within the room of the filesystem of
// root (dest's, or its nearest existing ancestor), less what dest holds of
// it already.
func fits(dest, root string, m *checkpoint.Manifest, limits Limits) error {
	if limits.MaxCheckpointSize > 0 && m.Bytes > limits.MaxCheckpointSize {
		return tooLarge(m.Bytes, limits.MaxCheckpointSize)
	}
	var have int64
	for _, file := range m.Files {
		have += min(regularSize(filepath.Join(dest, filepath.FromSlash(file.Path))), file.Size)
	}
	sp, err := statSpace(root)
	if err != nil {
		return err
	}
	if need := m.Bytes - have; sp.room(limits) < need {
		what := fmt.Sprintf("the checkpoint needs %s", formatBytes(m.Bytes))
		if have > 0 {
			what += fmt.Sprintf(", %s more than the %s already there", formatBytes(need), formatBytes(have))
		}
		return noSpace(what, sp, limits)
	}
	return nil
}

// removeUnlisted removes the regular files under dest the manifest does not
// list: what a push left that is no part of this checkpoint.
func removeUnlisted(dest string, m *checkpoint.Manifest) error {
	listed := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		listed[f.Path] = true
	}
	return filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dest, p)
		if err != nil {
			return err
		}
		if !listed[filepath.ToSlash(rel)] {
			return os.Remove(p)
		}
		return nil
	})
}

type fetcher struct {
	client      *http.Client
	base        url.URL
	secret      string
	alloc, task string
	logger      hclog.Logger
	buf         []byte
	idle        time.Duration
}

// retry runs fn until it succeeds, fails with an error that is not a
// retryableError, fetchAttempts tries are spent, or ctx ends.
func (f *fetcher) retry(ctx context.Context, what string, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		var re *retryableError
		if !errors.As(err, &re) || attempt >= fetchAttempts || ctx.Err() != nil {
			if attempt > 1 {
				return fmt.Errorf("%s: after %d attempts: %w", what, attempt, err)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		delay := time.Duration(attempt) * retryDelay
		f.logger.Warn("transfer failed, retrying", "path", what, "attempt", attempt, "delay", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (retrying after: %v)", what, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// get requests rel under the checkpoint from byte from on, and returns the
// response when it is 200 OK, or 206 for a range. The source must answer,
// and then send each part of the body, within the idle timeout.
func (f *fetcher) get(ctx context.Context, rel string, from int64) (*http.Response, error) {
	elems := []string{"v1", "checkpoints", url.PathEscape(f.alloc), url.PathEscape(f.task)}
	for elem := range strings.SplitSeq(rel, "/") {
		elems = append(elems, url.PathEscape(elem))
	}
	u := f.base.JoinPath(elems...)
	rctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("build request: %w", err)
	}
	setSecret(req.Header, f.secret)
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	}
	d := f.idle
	timer := newIdleTimer(d, func() { cancel(stalled("the source sent nothing", d)) })
	resp, err := f.client.Do(req)
	timer.stop()
	if err != nil {
		cancel(nil)
		return nil, &retryableError{causeOf(rctx, err)}
	}
	resp.Body = &idleBody{body: resp.Body, timer: timer, ctx: rctx, cancel: cancel}
	if resp.StatusCode == http.StatusOK || (from > 0 && resp.StatusCode == http.StatusPartialContent) {
		return resp, nil
	}
	defer resp.Body.Close()
	err = statusError(resp)
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
		return nil, &retryableError{err}
	}
	return nil, err
}

func (f *fetcher) getManifest(ctx context.Context) ([]byte, error) {
	resp, err := f.get(ctx, checkpoint.ManifestName, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, checkpoint.MaxManifestSize+1))
	if err != nil {
		return nil, &retryableError{fmt.Errorf("read: %w", err)}
	}
	if len(data) > checkpoint.MaxManifestSize {
		return nil, fmt.Errorf("larger than %d bytes", checkpoint.MaxManifestSize)
	}
	return data, nil
}

// file makes dest's copy of one listed file complete and checked: what is
// there already is hashed and kept, the rest downloaded. A copy that turns
// out wrong is downloaded once more from the start.
func (f *fetcher) file(ctx context.Context, root *os.Root, want checkpoint.File) (int64, error) {
	if dir := path.Dir(want.Path); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return 0, fmt.Errorf("%s: %w", want.Path, err)
		}
	}
	out, err := root.OpenFile(want.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", want.Path, err)
	}
	defer out.Close()
	var total int64
	for attempt := 0; ; attempt++ {
		h := checkpoint.NewFileHash()
		have, err := f.resume(out, h, want.Size, attempt > 0)
		if err != nil {
			return total, fmt.Errorf("%s: %w", want.Path, err)
		}
		if have < want.Size {
			err := f.retry(ctx, want.Path, func() error {
				n, err := f.download(ctx, out, h, want, have)
				total += n
				have += n
				return err
			})
			if err != nil {
				return total, err
			}
		}
		err = want.Check(have, h)
		if err == nil {
			return total, nil
		}
		if attempt > 0 || have == 0 {
			return total, err
		}
		f.logger.Warn("a file kept from a push does not match the manifest; fetching it whole", "path", want.Path)
	}
}

// resume hashes what out holds already (nothing when fresh) into h, and
// returns its size; a file longer than size is emptied.
func (f *fetcher) resume(out *os.File, h hash.Hash, size int64, fresh bool) (int64, error) {
	fi, err := out.Stat()
	if err != nil {
		return 0, err
	}
	if fresh || fi.Size() > size {
		return 0, out.Truncate(0)
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(h, io.LimitReader(out, fi.Size()), f.buf)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// download streams want from byte from into out at from, through h.
func (f *fetcher) download(ctx context.Context, out *os.File, h hash.Hash, want checkpoint.File, from int64) (int64, error) {
	resp, err := f.get(ctx, "files/"+want.Path, from)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && from > 0 {
		return 0, fmt.Errorf("the source ignored the range request")
	}
	if _, err := out.Seek(from, io.SeekStart); err != nil {
		return 0, err
	}
	// Read one byte more than expected to notice a longer body.
	n, err := io.CopyBuffer(io.MultiWriter(out, h), io.LimitReader(&networkReader{resp.Body}, want.Size-from+1), f.buf)
	if err != nil {
		return n, err
	}
	return n, nil
}

// networkReader marks errors reading a response body as retryable.
type networkReader struct{ r io.Reader }

func (r *networkReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = &retryableError{err}
	}
	return n, err
}
