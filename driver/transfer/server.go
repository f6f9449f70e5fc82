package transfer

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

const checkpointsPath = "/v1/checkpoints/"

// Server serves the checkpoints under Root, read-only, over HTTP (see the
// package documentation for the routes). Every checkpoint request must carry
// Token in the X-Ferry-Token header; with an empty Token every checkpoint
// request is refused. Paths are confined to Root/{alloc}/{task}: requests
// with "..", absolute or otherwise unclean paths are rejected, symlinks that
// lead out of the checkpoint directory are not followed, and only regular
// files that the checkpoint's manifest lists are served.
type Server struct {
	Root   string
	Token  string
	Logger hclog.Logger
}

// Handler returns the server's HTTP handler. It captures the Server's fields:
// later changes to them do not affect it.
func (s *Server) Handler() http.Handler {
	logger := s.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	h := &handler{
		root:     s.Root,
		hasToken: s.Token != "",
		token:    sha256.Sum256([]byte(s.Token)),
		logger:   logger.Named("transfer"),
	}
	if !h.hasToken {
		h.logger.Error("no checkpoint token configured: refusing every checkpoint request")
	}
	return h
}

type handler struct {
	root     string
	hasToken bool
	// token is the SHA-256 of the token, so that comparing takes the same
	// time whatever the length of the token presented.
	token  [sha256.Size]byte
	logger hclog.Logger
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v1/health":
		if !allowMethod(w, r) {
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	case strings.HasPrefix(r.URL.Path, checkpointsPath):
		h.serveCheckpoint(w, r)
	default:
		http.NotFound(w, r)
	}
}

func allowMethod(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

func (h *handler) authorized(r *http.Request) bool {
	got := sha256.Sum256([]byte(r.Header.Get(TokenHeader)))
	return h.hasToken && subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

// serveCheckpoint serves {alloc}/{task}/manifest.json and
// {alloc}/{task}/files/{path}. It works on the decoded path without
// cleaning it, so that percent-encoded dots and slashes are checked like
// plain ones and nothing is redirected.
func (h *handler) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r) {
		return
	}
	if !h.authorized(r) {
		h.logger.Warn("refused checkpoint request: missing or invalid token",
			"remote_addr", r.RemoteAddr, "path", r.URL.Path)
		http.Error(w, "missing or invalid "+TokenHeader, http.StatusUnauthorized)
		return
	}
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, checkpointsPath), "/", 3)
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	alloc, task, rest := parts[0], parts[1], parts[2]
	if err := checkName("allocation ID", alloc); err != nil {
		h.badRequest(w, r, err)
		return
	}
	if err := checkName("task name", task); err != nil {
		h.badRequest(w, r, err)
		return
	}
	logger := h.logger.With("alloc_id", alloc, "task", task, "remote_addr", r.RemoteAddr)

	var file string
	switch {
	case rest == ManifestName:
	case strings.HasPrefix(rest, "files/"):
		file = strings.TrimPrefix(rest, "files/")
		if err := checkRelPath(file); err != nil {
			h.badRequest(w, r, err)
			return
		}
	default:
		http.NotFound(w, r)
		return
	}

	root, err := os.OpenRoot(CheckpointDir(h.root, alloc, task))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			http.NotFound(w, r)
			return
		}
		logger.Error("open checkpoint directory", "error", err)
		http.Error(w, "cannot open checkpoint", http.StatusInternalServerError)
		return
	}
	defer root.Close()

	manifest, modTime, err := readManifest(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// No manifest: no checkpoint, or one still being written.
			http.NotFound(w, r)
			return
		}
		logger.Error("read manifest", "error", err)
		http.Error(w, "cannot read manifest", http.StatusInternalServerError)
		return
	}
	entries, err := parseManifest(manifest)
	if err != nil {
		logger.Error("invalid manifest", "error", err)
		http.Error(w, "invalid manifest", http.StatusInternalServerError)
		return
	}

	if file == "" {
		w.Header().Set("Content-Type", "application/json")
		http.ServeContent(w, r, "", modTime, bytes.NewReader(manifest))
		logger.Debug("served manifest", "files", len(entries))
		return
	}
	var entry *FileEntry
	for i := range entries {
		if entries[i].Path == file {
			entry = &entries[i]
			break
		}
	}
	if entry == nil {
		logger.Warn("refused file not listed in the manifest", "path", file)
		http.NotFound(w, r)
		return
	}
	h.serveFile(w, r, logger, root, entry)
}

func (h *handler) serveFile(w http.ResponseWriter, r *http.Request, logger hclog.Logger, root *os.Root, entry *FileEntry) {
	logger = logger.With("path", entry.Path)
	// Stat before opening, so that a FIFO or device never blocks the open.
	fi, err := root.Stat(entry.Path)
	if err != nil {
		// Missing, or a symlink leading out of the checkpoint.
		logger.Warn("cannot serve listed file", "error", err)
		http.NotFound(w, r)
		return
	}
	if !fi.Mode().IsRegular() {
		logger.Warn("refused listed file that is not a regular file", "mode", fi.Mode().String())
		http.NotFound(w, r)
		return
	}
	f, err := root.Open(entry.Path)
	if err != nil {
		logger.Warn("cannot serve listed file", "error", err)
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		logger.Error("stat opened file", "error", err)
		http.Error(w, "cannot read file", http.StatusInternalServerError)
		return
	}
	if fi.Size() != entry.Size {
		logger.Error("file size differs from the manifest", "size", fi.Size(), "manifest_size", entry.Size)
		http.Error(w, "file does not match the manifest", http.StatusInternalServerError)
		return
	}
	start := time.Now()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
	logger.Debug("served file", "bytes", entry.Size, "duration", time.Since(start))
}

func (h *handler) badRequest(w http.ResponseWriter, r *http.Request, err error) {
	h.logger.Warn("refused checkpoint request", "remote_addr", r.RemoteAddr, "path", r.URL.Path, "error", err)
	http.Error(w, err.Error(), http.StatusBadRequest)
}

// readManifest reads the manifest of the checkpoint directory root.
func readManifest(root *os.Root) ([]byte, time.Time, error) {
	// Stat before opening, so that a FIFO never blocks the open.
	if fi, err := root.Stat(ManifestName); err != nil {
		return nil, time.Time{}, err
	} else if !fi.Mode().IsRegular() {
		return nil, time.Time{}, fmt.Errorf("%s is not a regular file", ManifestName)
	}
	f, err := root.Open(ManifestName)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, time.Time{}, fmt.Errorf("%s is not a regular file", ManifestName)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(data) > maxManifestSize {
		return nil, time.Time{}, fmt.Errorf("%s larger than %d bytes", ManifestName, maxManifestSize)
	}
	return data, fi.ModTime(), nil
}
