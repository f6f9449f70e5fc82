package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	// layerMetaFile describes an unpacked layer; layerFSDir holds its
	// files. Both live in the layer's directory, which is renamed into
	// place once complete.
	layerMetaFile = "layer.json"
	layerFSDir    = "fs"
)

// layerMeta is the layer.json of an unpacked layer.
type layerMeta struct {
	DiffID v1.Hash `json:"diff_id"`
	// Size is the bytes of regular files in the layer.
	Size int64 `json:"size"`
	// Implicit lists the directories (relative to fs/, "" for fs/ itself)
	// that the layer has no entry for: their metadata is the lower
	// layers'.
	Implicit []string `json:"implicit_dirs,omitempty"`
	// Links are hard links to files of lower layers.
	Links []layerLink `json:"links,omitempty"`
	// SkippedDevices counts the character and block devices of the layer
	// (whiteouts aside) that were not created, with the hard links to
	// them.
	SkippedDevices int `json:"skipped_devices,omitempty"`
}

// layerLink is a hard link at Path to the file at Target, both relative
// to the rootfs; Target is in a lower layer.
type layerLink struct {
	Path   string `json:"path"`
	Target string `json:"target"`
}

func (s *Store) layerPath(d v1.Hash) string { return filepath.Join(s.layerDir, d.Hex) }

// layerFS is where the files of the layer in directory dir are.
func layerFS(dir string) string { return filepath.Join(dir, layerFSDir) }

// readLayer returns the metadata of an unpacked layer, or nil if the cache
// does not have it complete: no layer.json (layers only appear under their
// final name once complete, so that means none, or a damaged one) or one
// that does not decode. Any other error is returned: the layer may be fine,
// and must not be taken for damaged.
func (s *Store) readLayer(d v1.Hash) (*layerMeta, error) {
	b, err := os.ReadFile(filepath.Join(s.layerPath(d), layerMetaFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", d, err)
	}
	var m layerMeta
	if err := json.Unmarshal(b, &m); err != nil || m.DiffID != d {
		s.logger.Warn("ignoring unreadable layer metadata", "diff_id", d, "error", err)
		return nil, nil
	}
	return &m, nil
}

// hasLayer reports whether the layer with diff ID d is unpacked.
func (s *Store) hasLayer(d v1.Hash) bool {
	fi, err := os.Stat(filepath.Join(s.layerPath(d), layerMetaFile))
	return err == nil && fi.Mode().IsRegular()
}

// pinLayer protects an unpacked layer (or one about to be) from removal
// while a pull uses it; the pin's lock serialises unpacking it. The returned
// function unpins it.
func (s *Store) pinLayer(d v1.Hash) (*pin, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.layerPins[d]
	if p == nil {
		p = &pin{sem: make(chan struct{}, 1)}
		s.layerPins[d] = p
	}
	p.n++
	return p, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p.n--; p.n <= 0 && s.layerPins[d] == p {
			delete(s.layerPins, d)
		}
	}
}

// layerJob is one layer of a pull: downloaded if needed, unpacked unless
// the cache has it, then assembled into the rootfs in order.
type layerJob struct {
	desc   v1.Descriptor
	diffID v1.Hash // from the config; empty when it lists none
	ready  chan struct{}

	// Set before ready is closed.
	meta   *layerMeta
	reused bool
	err    error
}

// prepareLayer makes sure the layer of job is unpacked in the cache. hold
// receives the unpin functions of the layers it pins; they must run once
// the image that uses the layer is recorded (or the pull failed).
func (s *Store) prepareLayer(ctx context.Context, ref Ref, i, n int, job *layerJob, fetch func() error, hold func(func())) error {
	if job.diffID.Hex != "" {
		m, unlock, err := s.lockLayer(ctx, ref, job.diffID, hold)
		if err != nil {
			return err
		}
		defer unlock()
		if m != nil {
			job.meta, job.reused = m, true
			return nil
		}
	}
	if err := fetch(); err != nil {
		return err
	}
	tmp, m, err := s.unpackLayer(ctx, ref, i, n, job.desc, job.diffID)
	if err != nil {
		return err
	}
	defer func() {
		if tmp != "" {
			if err := removeTree(tmp); err != nil {
				s.logger.Warn("cannot remove partial layer", "path", tmp, "error", err)
			}
		}
	}()
	if job.diffID.Hex == "" {
		// Keyed by the digest computed while unpacking.
		existing, unlock, err := s.lockLayer(ctx, ref, m.DiffID, hold)
		if err != nil {
			return err
		}
		defer unlock()
		if existing != nil {
			job.meta, job.reused = existing, true
			return nil
		}
	}
	final := s.layerPath(m.DiffID)
	if _, err := os.Lstat(final); err == nil {
		// Not a complete layer (readLayer found no metadata it could
		// decode): replace it.
		s.logger.Warn("replacing damaged layer", "diff_id", m.DiffID)
		gone, err := s.moveLayerAside(m.DiffID.Hex)
		if err != nil {
			return fmt.Errorf("pull %s: move damaged layer %s aside: %w", ref.display(), m.DiffID, err)
		}
		if err := removeTree(gone); err != nil {
			s.logger.Warn("cannot remove damaged layer", "path", gone, "error", err)
		}
	}
	if err := renameDurably(tmp, final); err != nil {
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	tmp = ""
	s.layerUnpacks.Add(1)
	job.meta = m
	return nil
}

// lockLayer pins the layer with diff ID d for the pull (hold receives the
// unpin function), takes its lock and returns its metadata, nil if the
// cache does not have it. The caller unlocks it.
func (s *Store) lockLayer(ctx context.Context, ref Ref, d v1.Hash, hold func(func())) (*layerMeta, func(), error) {
	p, unpin := s.pinLayer(d)
	hold(unpin)
	unlock, err := p.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.readLayer(d)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	return m, unlock, nil
}

// unpackLayer unpacks a cached layer blob into a new temporary layer
// directory, and checks its uncompressed digest against the config's
// diff_id (when given). It returns the directory and the layer's metadata,
// written in it too.
func (s *Store) unpackLayer(ctx context.Context, ref Ref, i, n int, desc v1.Descriptor, diffID v1.Hash) (string, *layerMeta, error) {
	name := diffID.Hex
	if name == "" {
		name = "blob-" + desc.Digest.Hex
	}
	// A layer takes about its compressed size at least; its files are
	// checked again as they are written.
	if err := s.checkFreeSpace(desc.Size); err != nil {
		if lerr := limitError(err, ref, i, n, desc); lerr != nil {
			return "", nil, lerr
		}
		return "", nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	tmp, err := os.MkdirTemp(s.layerDir, tmpPrefix+name+"-")
	if err != nil {
		return "", nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	ok := false
	defer func() {
		if !ok {
			if err := removeTree(tmp); err != nil {
				s.logger.Warn("cannot remove partial layer", "path", tmp, "error", err)
			}
		}
	}()
	fsDir := layerFS(tmp)
	if err := mkdir755(fsDir); err != nil {
		return "", nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}

	start := time.Now()
	f, err := s.openBlob(desc.Digest)
	if err != nil {
		return "", nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	defer f.Close()
	zr, err := decompress(f)
	if err != nil {
		return "", nil, newKindError(ErrInvalid, err, "pull %s: layer %d/%d %s", ref.display(), i+1, n, desc.Digest)
	}
	defer zr.Close()
	h := sha256.New()
	r := io.TeeReader(&limitReader{r: zr, limit: s.maxLayerSize}, h)
	u := newUnpacker(fsDir, s.logger.With("ref", ref.String(), "layer", desc.Digest.String()))
	u.maxSize = s.maxLayerSize
	u.checkSpace = s.checkFreeSpace
	if err := u.apply(ctx, i+1, r); err != nil {
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		if lerr := limitError(err, ref, i, n, desc); lerr != nil {
			return "", nil, lerr
		}
		return "", nil, fmt.Errorf("pull %s: unpack %w", ref.display(), err)
	}
	// Drain the end of the archive so the digest covers the whole stream
	// (and gzip verifies its checksum).
	if _, err := io.Copy(io.Discard, r); err != nil {
		if lerr := limitError(err, ref, i, n, desc); lerr != nil {
			return "", nil, lerr
		}
		return "", nil, newKindError(ErrInvalid, err, "pull %s: layer %d/%d %s", ref.display(), i+1, n, desc.Digest)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if diffID.Hex != "" && got != diffID.Hex {
		return "", nil, newKindError(ErrInvalid, nil, "pull %s: layer %d/%d %s uncompresses to sha256:%s, but the config says %s (corrupt image)",
			ref.display(), i+1, n, desc.Digest, got, diffID)
	}
	m := u.meta(v1.Hash{Algorithm: "sha256", Hex: got})
	b, err := json.Marshal(m)
	if err != nil {
		return "", nil, fmt.Errorf("pull %s: encode layer metadata: %w", ref.display(), err)
	}
	if err := os.WriteFile(filepath.Join(tmp, layerMetaFile), b, 0o600); err != nil {
		return "", nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	if u.skippedDevices > 0 {
		s.logger.Info("device nodes in the layer not created (containers get their /dev from the runtime)",
			"ref", ref.String(), "layer", desc.Digest, "count", u.skippedDevices)
	}
	if u.droppedXattrs > 0 {
		s.logger.Debug("extended attributes of the layer dropped (only user.*, security.capability and ACLs are kept)",
			"ref", ref.String(), "layer", desc.Digest, "count", u.droppedXattrs)
	}
	if u.skippedXattrs > 0 {
		s.logger.Warn("extended attributes not set (not permitted or not supported)", "ref", ref.String(), "layer", desc.Digest, "count", u.skippedXattrs)
	}
	s.logger.Debug("layer unpacked", "ref", ref.String(), "diff_id", m.DiffID, "size", m.Size, "duration", time.Since(start))
	ok = true
	return tmp, m, nil
}

// sweepLayersLocked moves the unpacked layers that no complete image lists
// and no pull in progress relies on out of the way, and returns their new
// paths for the caller to remove without holding the lock. That also clears
// layers left by failed pulls.
func (s *Store) sweepLayersLocked() []string {
	keep := map[string]bool{}
	for _, m := range s.images {
		for _, l := range m.Layers {
			keep[l.Hex] = true
		}
	}
	for d := range s.layerPins {
		keep[d.Hex] = true
	}
	entries, err := os.ReadDir(s.layerDir)
	if err != nil {
		s.logger.Warn("cannot list layers", "dir", s.layerDir, "error", err)
		return nil
	}
	var trash []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, tmpPrefix) || keep[n] {
			continue
		}
		gone, err := s.moveLayerAside(n)
		if err != nil {
			s.logger.Warn("cannot remove layer", "diff_id", "sha256:"+n, "error", err)
			continue
		}
		trash = append(trash, gone)
	}
	if len(trash) > 0 {
		s.logger.Debug("removing unreferenced layers", "count", len(trash))
	}
	return trash
}

// moveLayerAside renames the entry name of the layer directory to a
// temporary name and returns its new path, for the caller to remove: the
// layer is gone at once for pulls, and a crash during the removal leaves a
// leftover the next start removes.
func (s *Store) moveLayerAside(name string) (string, error) {
	gone := filepath.Join(s.layerDir, fmt.Sprintf("%sgc-%s-%d", tmpPrefix, name, time.Now().UnixNano()))
	if err := os.Rename(filepath.Join(s.layerDir, name), gone); err != nil {
		return "", err
	}
	return gone, nil
}

// loadLayers removes leftovers of interrupted writes and entries of the
// layer directory that are not complete layers. A layer whose metadata
// cannot be read is left alone: pulls that need it report the error.
func (s *Store) loadLayers() error {
	if err := removeTemps(s.layerDir); err != nil {
		return err
	}
	entries, err := os.ReadDir(s.layerDir)
	if err != nil {
		return fmt.Errorf("read %s: %w", s.layerDir, err)
	}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() && isHex64(n) {
			m, err := s.readLayer(v1.Hash{Algorithm: "sha256", Hex: n})
			if err != nil {
				s.logger.Warn("cannot check layer", "diff_id", "sha256:"+n, "error", err)
			}
			if m != nil || err != nil {
				continue
			}
		}
		p := filepath.Join(s.layerDir, n)
		s.logger.Warn("removing incomplete layer", "path", p)
		if err := removeTree(p); err != nil {
			return fmt.Errorf("remove incomplete layer %s: %w", p, err)
		}
	}
	return nil
}
