package transfer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// ErrTooLarge: the checkpoint is larger than Limits.MaxCheckpointSize,
	// or a push brings more than its record announced.
	ErrTooLarge = errors.New("checkpoint too large")
	// ErrNoSpace: the checkpoint does not fit in the free space of the
	// receiving node's filesystem, less Limits.MinFreeSpace.
	ErrNoSpace = errors.New("not enough free space for the checkpoint")
)

// space is the free space of the filesystem holding a directory.
type space struct {
	dir  string // the directory looked at: the nearest one that exists
	free uint64 // bytes an unprivileged writer may still use
	size uint64 // the filesystem's size
}

// statSpace returns the space of the filesystem dir is (or will be) on,
// looking at its nearest existing ancestor.
func statSpace(dir string) (space, error) {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if err == nil {
			bs := uint64(st.Bsize)
			return space{dir: d, free: st.Bavail * bs, size: st.Blocks * bs}, nil
		}
		if !errors.Is(err, unix.ENOENT) || d == filepath.Dir(d) {
			return space{}, fmt.Errorf("free space of %s: %w", d, err)
		}
	}
}

// room is what may still be written there, keeping l's minimum free.
func (s space) room(l Limits) int64 {
	keep := l.minFree(s.size)
	if s.free <= keep {
		return 0
	}
	return int64(min(s.free-keep, 1<<62))
}

// noSpace is the error of a checkpoint that does not fit where sp is:
// what says what it needs.
func noSpace(what string, sp space, l Limits) error {
	return fmt.Errorf("%w: %s; the filesystem of %s has %s free and keeps %s of it free (transfer min_free_space): free space there",
		ErrNoSpace, what, sp.dir, formatBytes(int64(min(sp.free, 1<<62))), formatBytes(int64(min(l.minFree(sp.size), 1<<62))))
}

// tooLarge is the error of a checkpoint of size bytes (or at least as
// many), more than max.
func tooLarge(size, max int64) error {
	return fmt.Errorf("%w: %s (%d bytes), more than the %d bytes this node accepts (transfer max_checkpoint_size)",
		ErrTooLarge, formatBytes(size), size, max)
}

// formatBytes writes n in the unit that suits it.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[i])
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// regularSize is the size of path when it is a regular file, else 0.
func regularSize(path string) int64 {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return fi.Size()
}

// removeReceived removes dir, a checkpoint refused on its way in, and the
// directories above it, below keep, that it leaves empty.
func removeReceived(dir, keep string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	under := filepath.Clean(keep) + string(filepath.Separator)
	for d := filepath.Dir(filepath.Clean(dir)); strings.HasPrefix(d, under); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break // not empty: another checkpoint's
		}
	}
	return nil
}

// existingAncestor is the nearest of dir and its ancestors that exists.
func existingAncestor(dir string) string {
	d := filepath.Clean(dir)
	for {
		if _, err := os.Lstat(d); err == nil || d == filepath.Dir(d) {
			return d
		}
		d = filepath.Dir(d)
	}
}
