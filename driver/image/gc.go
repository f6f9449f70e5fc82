package image

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/sys/mountinfo"
)

// collect removes an image whose removal timer fired, unless the removal was
// cancelled or the image is in use again.
func (s *Store) collect(d v1.Hash, rt *removalTimer) {
	s.mu.Lock()
	if s.timers[d] != rt {
		s.mu.Unlock()
		return
	}
	delete(s.timers, d)
	meta, ok := s.images[d]
	if s.closed || !ok || s.refs[d] > 0 || s.pins[d] != nil {
		s.mu.Unlock()
		return
	}
	if mounted, err := mountedAsLower(meta.rootfs); mounted || err != nil {
		// A task the driver has not (yet) taken up again still runs on it.
		s.logger.Warn("unused image still mounted by a task, kept", "ref", meta.Ref, "digest", d, "error", err)
		s.scheduleRemovalLocked(d, s.gcDelay)
		s.mu.Unlock()
		return
	}
	delete(s.images, d)
	dropped := false
	for k, rd := range s.resolved {
		if rd == d {
			delete(s.resolved, k)
			dropped = true
		}
	}
	done := make(chan struct{})
	s.removing[d] = done
	s.mu.Unlock()

	s.logger.Info("removing unused image", "ref", meta.Ref, "digest", d, "size", meta.Size)
	// Metadata first: a crash half-way leaves an incomplete rootfs, which
	// the next start removes.
	if err := os.Remove(s.metaPath(d)); err != nil && !os.IsNotExist(err) {
		s.logger.Warn("cannot remove image metadata", "path", s.metaPath(d), "error", err)
	}
	if err := removeTree(s.rootfsPath(d)); err != nil {
		s.logger.Warn("cannot remove image rootfs", "path", s.rootfsPath(d), "error", err)
	}
	if dropped {
		s.persistResolved()
	}

	s.mu.Lock()
	delete(s.removing, d)
	close(done)
	s.sweepBlobsLocked()
	trash := s.sweepLayersLocked()
	s.mu.Unlock()
	for _, p := range trash {
		if err := removeTree(p); err != nil {
			s.logger.Warn("cannot remove layer", "path", p, "error", err)
		}
	}
}

// sweepBlobsLocked removes the blobs that no complete image lists and no pull
// in progress relies on. That also clears blobs left by failed pulls.
func (s *Store) sweepBlobsLocked() {
	keep := map[string]bool{}
	for _, m := range s.images {
		for _, b := range m.Blobs {
			keep[b.Hex] = true
		}
	}
	for b := range s.blobPins {
		keep[b.Hex] = true
	}
	entries, err := os.ReadDir(s.blobDir)
	if err != nil {
		s.logger.Warn("cannot list blobs", "dir", s.blobDir, "error", err)
		return
	}
	removed := 0
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, tmpPrefix) || keep[n] {
			continue
		}
		if err := os.Remove(s.blobPath(v1.Hash{Algorithm: "sha256", Hex: n})); err != nil && !os.IsNotExist(err) {
			s.logger.Warn("cannot remove blob", "digest", "sha256:"+n, "error", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		s.logger.Debug("removed unreferenced blobs", "count", removed)
	}
}

// removeTree removes a rootfs. Directories without write permission (an
// image may ship such) are made writable first so their entries can go.
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil {
		return nil
	}
	// As root this is rarely needed; for unprivileged use make every
	// directory writable and retry once.
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, _ error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// mountedAsLower reports whether dir is a lower directory of an overlay
// mounted in this mount namespace (the rootfs of a task).
func mountedAsLower(dir string) (bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("overlay"))
	if err != nil {
		return false, fmt.Errorf("list mounts: %w", err)
	}
	for _, m := range mounts {
		// Superblock options: rw,lowerdir=A:B,upperdir=...,workdir=...
		for _, opt := range strings.Split(m.VFSOptions, ",") {
			if lower, ok := strings.CutPrefix(opt, "lowerdir="); ok && slices.Contains(strings.Split(lower, ":"), dir) {
				return true, nil
			}
		}
	}
	return false, nil
}
