package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	// fetchAttempts is how many times one request is tried when the
	// network, not the data, fails.
	fetchAttempts = 3
	// retryDelay grows linearly with each retry.
	retryDelay = 250 * time.Millisecond
	// partialPrefix names files being downloaded, next to their final name.
	partialPrefix = ".ferry-partial-"
	// copyBufferSize is the buffer streaming a file to disk.
	copyBufferSize = 256 << 10
)

var (
	// ErrUnauthorized: the source refused the token.
	ErrUnauthorized = errors.New("source refused the token")
	// ErrNotFound: the source has no such checkpoint or file.
	ErrNotFound = errors.New("not found on the source")
)

// MismatchError reports a file whose received data does not match its
// manifest entry. It is never retried.
type MismatchError struct {
	Path string
	// Kind is "size" or "sha256".
	Kind string
	Want string
	Got  string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: %s mismatch: manifest says %s, received %s", e.Path, e.Kind, e.Want, e.Got)
}

// retryableError marks a failure of the network or of an overloaded source,
// worth trying again.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// Fetch downloads the checkpoint of alloc's task from the Server at baseURL
// (e.g. "http://10.97.0.11:4700") into dest, presenting token. dest and the
// directories under it are created 0700, files 0600. Each file is streamed
// to a temporary name through SHA-256 and renamed into place only when its
// size and digest match the manifest; the manifest itself is written last,
// so dest holds manifest.json only when the whole checkpoint is there (and
// fsynced). A previous manifest.json in dest is removed first.
//
// A request failing on the network (or with 502, 503, 504, 429) is retried a
// couple of times; a refused token (ErrUnauthorized), a missing checkpoint
// (ErrNotFound) or data that does not match the manifest (*MismatchError,
// naming the file) is not. On error, dest may hold some of the files but no
// manifest; the caller removes it. A nil client uses a plain http.Client;
// redirects are never followed, so that the token goes nowhere else. ctx
// bounds the whole transfer.
//
// It returns the bytes written to dest: the files and the manifest.
func Fetch(ctx context.Context, client *http.Client, baseURL, token, alloc, task, dest string, logger hclog.Logger) (int64, error) {
	wrap := func(err error) error {
		return fmt.Errorf("transfer: fetch %s/%s from %s: %w", alloc, task, baseURL, err)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.Named("transfer").With("alloc_id", alloc, "task", task, "source", baseURL)
	if err := checkName("allocation ID", alloc); err != nil {
		return 0, wrap(err)
	}
	if err := checkName("task name", task); err != nil {
		return 0, wrap(err)
	}
	if token == "" {
		return 0, wrap(errors.New("no token to present"))
	}
	if dest == "" {
		return 0, wrap(errors.New("no destination directory"))
	}
	base, err := url.Parse(baseURL)
	if err != nil {
		return 0, wrap(fmt.Errorf("invalid source URL: %w", err))
	}
	if (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return 0, wrap(fmt.Errorf("invalid source URL %q: want http(s)://host:port", baseURL))
	}
	if client == nil {
		client = &http.Client{}
	}
	noRedirect := *client
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	f := &fetcher{client: &noRedirect, base: base, token: token, alloc: alloc, task: task, logger: logger}

	start := time.Now()
	var manifest []byte
	err = f.retry(ctx, ManifestName, func() error {
		var err error
		manifest, err = f.getManifest(ctx)
		return err
	})
	if err != nil {
		return 0, wrap(fmt.Errorf("%s: %w", ManifestName, err))
	}
	entries, err := parseManifest(manifest)
	if err != nil {
		return 0, wrap(fmt.Errorf("source sent an invalid manifest: %w", err))
	}

	if err := os.MkdirAll(dest, 0o700); err != nil {
		return 0, wrap(fmt.Errorf("create destination: %w", err))
	}
	// The checkpoint holds the task's memory: keep it to root even if the
	// directory existed.
	if err := os.Chmod(dest, 0o700); err != nil {
		return 0, wrap(fmt.Errorf("create destination: %w", err))
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return 0, wrap(fmt.Errorf("open destination: %w", err))
	}
	defer root.Close()
	// A previous manifest would make a partly overwritten directory look
	// complete.
	if err := root.Remove(ManifestName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, wrap(fmt.Errorf("remove previous %s: %w", ManifestName, err))
	}

	var total int64
	dirs := map[string]bool{".": true}
	for i, e := range entries {
		fileStart := time.Now()
		var n int64
		err := f.retry(ctx, e.Path, func() error {
			var err error
			n, err = f.downloadFile(ctx, root, e)
			return err
		})
		if err != nil {
			var mismatch *MismatchError
			if errors.As(err, &mismatch) {
				return total, wrap(err)
			}
			return total, wrap(fmt.Errorf("%s: %w", e.Path, err))
		}
		total += n
		for dir := path.Dir(e.Path); !dirs[dir]; dir = path.Dir(dir) {
			dirs[dir] = true
		}
		logger.Debug("file received", "path", e.Path, "bytes", n, "file", i+1, "files", len(entries),
			"duration", time.Since(fileStart))
	}

	// Everything the manifest vouches for reaches the disk before it does.
	for dir := range dirs {
		if err := syncDir(root, dir); err != nil {
			return total, wrap(err)
		}
	}
	if err := writeFileSync(root, ManifestName, manifest); err != nil {
		return total, wrap(err)
	}
	total += int64(len(manifest))
	elapsed := time.Since(start)
	logger.Info("checkpoint received", "files", len(entries), "bytes", total, "duration", elapsed,
		"mib_per_s", fmt.Sprintf("%.1f", float64(total)/(1<<20)/max(elapsed.Seconds(), 1e-6)))
	return total, nil
}

type fetcher struct {
	client      *http.Client
	base        *url.URL
	token       string
	alloc, task string
	logger      hclog.Logger
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
		if !errors.As(err, &re) || attempt >= fetchAttempts {
			if attempt > 1 {
				return fmt.Errorf("after %d attempts: %w", attempt, err)
			}
			return err
		}
		if ctx.Err() != nil {
			return err
		}
		delay := time.Duration(attempt) * retryDelay
		f.logger.Warn("transfer failed, retrying", "path", what, "attempt", attempt, "delay", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retrying after: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// get requests v1/checkpoints/{alloc}/{task}/{rel} and returns the response
// when it is 200 OK.
func (f *fetcher) get(ctx context.Context, rel string) (*http.Response, error) {
	// JoinPath takes escaped elements.
	elems := []string{"v1", "checkpoints", url.PathEscape(f.alloc), url.PathEscape(f.task)}
	for elem := range strings.SplitSeq(rel, "/") {
		elems = append(elems, url.PathEscape(elem))
	}
	u := f.base.JoinPath(elems...)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set(TokenHeader, f.token)
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, &retryableError{err}
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	detail := strings.TrimSpace(string(msg))
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, fmt.Errorf("%w (%s)", ErrUnauthorized, resp.Status)
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w (%s)", ErrNotFound, resp.Status)
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
		return nil, &retryableError{fmt.Errorf("source answered %s: %s", resp.Status, detail)}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, fmt.Errorf("source answered %s with a redirect to %q, which is not followed", resp.Status, resp.Header.Get("Location"))
	}
	return nil, fmt.Errorf("source answered %s: %s", resp.Status, detail)
}

func (f *fetcher) getManifest(ctx context.Context) ([]byte, error) {
	resp, err := f.get(ctx, ManifestName)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, &retryableError{fmt.Errorf("read: %w", err)}
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("larger than %d bytes", maxManifestSize)
	}
	return data, nil
}

// downloadFile streams one file to a temporary name next to its final one,
// checks its size and digest, syncs it and renames it into place.
func (f *fetcher) downloadFile(ctx context.Context, root *os.Root, e FileEntry) (n int64, err error) {
	resp, err := f.get(ctx, "files/"+e.Path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.ContentLength >= 0 && resp.ContentLength != e.Size {
		return 0, &MismatchError{Path: e.Path, Kind: "size",
			Want: fmt.Sprintf("%d bytes", e.Size), Got: fmt.Sprintf("Content-Length %d", resp.ContentLength)}
	}

	dir, name := path.Split(e.Path)
	if dir != "" {
		if err := root.MkdirAll(strings.TrimSuffix(dir, "/"), 0o700); err != nil {
			return 0, fmt.Errorf("create directory: %w", err)
		}
	}
	tmp := dir + partialPrefix + name
	out, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create: %w", err)
	}
	defer func() {
		if out != nil {
			_ = out.Close()
		}
		if err != nil {
			_ = root.Remove(tmp)
		}
	}()

	// Read one byte more than expected to notice a longer body.
	body := io.LimitReader(&networkReader{resp.Body}, e.Size+1)
	h := sha256.New()
	n, err = io.CopyBuffer(io.MultiWriter(out, h), body, make([]byte, copyBufferSize))
	if err != nil {
		var re *retryableError
		if errors.As(err, &re) {
			return n, &retryableError{fmt.Errorf("receive after %d of %d bytes: %w", n, e.Size, re.err)}
		}
		return n, fmt.Errorf("write: %w", err)
	}
	if n != e.Size {
		got := fmt.Sprintf("%d bytes", n)
		if n > e.Size {
			got = "more"
		}
		return n, &MismatchError{Path: e.Path, Kind: "size", Want: fmt.Sprintf("%d bytes", e.Size), Got: got}
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != e.SHA256 {
		return n, &MismatchError{Path: e.Path, Kind: "sha256", Want: e.SHA256, Got: sum}
	}
	if err := out.Sync(); err != nil {
		return n, fmt.Errorf("sync: %w", err)
	}
	closeErr := out.Close()
	out = nil
	if closeErr != nil {
		return n, fmt.Errorf("close: %w", closeErr)
	}
	if err := root.Rename(tmp, e.Path); err != nil {
		return n, fmt.Errorf("rename into place: %w", err)
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

// writeFileSync writes name (0600) under a temporary name, syncs it, renames
// it into place and syncs its directory.
func writeFileSync(root *os.Root, name string, data []byte) (err error) {
	dir, base := path.Split(name)
	tmp := dir + partialPrefix + base
	out, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = root.Remove(tmp)
		}
	}()
	if _, err := out.Write(data); err != nil {
		_ = out.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	if err := root.Rename(tmp, name); err != nil {
		return fmt.Errorf("rename %s into place: %w", name, err)
	}
	if dir == "" {
		dir = "."
	}
	return syncDir(root, strings.TrimSuffix(dir, "/"))
}

// syncDir fsyncs a directory under root, persisting the entries renamed
// into it.
func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
