package checkpoint

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/image"

	"golang.org/x/sys/unix"
)

// unpacker extracts a tar written by packTree into root, which exists.
// No entry may leave root: names are cleaned and refused when they climb
// out, and no path is ever resolved through a symlink, as the parents of
// every entry must be real directories. Device nodes (whiteouts aside) and
// extended attributes are filtered (see unpack_filter.go).
type unpacker struct {
	root string
	// dirs are the relative paths known to be real directories.
	dirs map[string]bool
	// skipped are the relative paths of device nodes not created, which
	// hard links cannot point at.
	skipped map[string]bool
	// dirTimes are applied last, as creating entries changes them.
	dirTimes []dirTime
}

type dirTime struct {
	path  string
	mtime time.Time
}

// unpackTree extracts the tar r into root.
func unpackTree(r io.Reader, root string) error {
	u := &unpacker{root: root, dirs: map[string]bool{".": true}, skipped: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	// Deepest first, so setting a child's time does not disturb a parent.
	for i := len(u.dirTimes) - 1; i >= 0; i-- {
		dt := u.dirTimes[i]
		if err := setTimes(dt.path, dt.mtime); err != nil {
			return fmt.Errorf("set times of %s: %w", dt.path, err)
		}
	}
	return nil
}

// cleanName returns the tar name as a clean path relative to the root, or
// an error when it is absolute or leaves the root.
func cleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("bad entry name %q", name)
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("entry %q has an absolute path", name)
	}
	rel := path.Clean(name)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("entry %q escapes the directory", name)
	}
	return rel, nil
}

// entry extracts one tar entry.
func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "." {
		// The root exists; it takes the archived xattrs and mtime, not
		// the archived mode or owner.
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("entry %q: the root is not a directory", hdr.Name)
		}
		if err := setXattrs(u.root, hdr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		u.dirTimes = append(u.dirTimes, dirTime{u.root, hdr.ModTime})
		return nil
	}
	if err := u.parents(rel); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	target := filepath.Join(u.root, filepath.FromSlash(rel))
	if err := u.clear(target, hdr.Typeflag == tar.TypeDir); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	delete(u.skipped, rel)
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		u.dirs[rel] = true
	case tar.TypeReg:
		if err := writeEntryFile(target, r, hdr.Size); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	case tar.TypeLink:
		return u.link(hdr, rel, target)
	case tar.TypeChar, tar.TypeBlock:
		if !image.IsOverlayWhiteout(hdr) {
			// Not created: the container gets its /dev from runc.
			u.skipped[rel] = true
			return nil
		}
		fallthrough
	case tar.TypeFifo:
		kind := uint32(unix.S_IFIFO)
		if hdr.Typeflag == tar.TypeChar {
			kind = unix.S_IFCHR // a whiteout: device 0:0
		}
		if err := unix.Mknod(target, kind|mode, 0); err != nil {
			return fmt.Errorf("entry %q: mknod: %w", hdr.Name, err)
		}
	default:
		return fmt.Errorf("entry %q: unsupported type %q", hdr.Name, hdr.Typeflag)
	}
	if err := setMeta(target, hdr); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeDir {
		u.dirTimes = append(u.dirTimes, dirTime{target, hdr.ModTime})
	}
	return nil
}

// parents makes sure every parent directory of rel is a real directory
// under the root, creating missing ones.
func (u *unpacker) parents(rel string) error {
	parent := path.Dir(rel)
	if u.dirs[parent] {
		return nil
	}
	cur := "."
	for _, part := range strings.Split(parent, "/") {
		cur = path.Join(cur, part)
		if u.dirs[cur] {
			continue
		}
		p := filepath.Join(u.root, filepath.FromSlash(cur))
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("parent %s is not a directory", cur)
		}
		u.dirs[cur] = true
	}
	return nil
}

// clear removes what is at target before an entry is written there: an
// earlier entry of the same name. A directory stays for a directory entry
// and is never replaced by anything else.
func (u *unpacker) clear(target string, isDir bool) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if isDir {
			return nil
		}
		return errors.New("would replace a directory")
	}
	return os.Remove(target)
}

// link makes target (at name in the archive) a hard link to the earlier
// entry hdr.Linkname; none if that entry is a device node not created.
func (u *unpacker) link(hdr *tar.Header, name, target string) error {
	rel, err := cleanName(hdr.Linkname)
	if err != nil || rel == "." {
		return fmt.Errorf("entry %q: bad hard link target %q", hdr.Name, hdr.Linkname)
	}
	if u.skipped[rel] {
		u.skipped[name] = true
		return nil
	}
	if !u.dirs[path.Dir(rel)] {
		return fmt.Errorf("entry %q: hard link target %q is not in the archive", hdr.Name, hdr.Linkname)
	}
	old := filepath.Join(u.root, filepath.FromSlash(rel))
	fi, err := os.Lstat(old)
	if err != nil {
		return fmt.Errorf("entry %q: hard link target: %w", hdr.Name, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("entry %q: hard link target %q is a directory", hdr.Name, hdr.Linkname)
	}
	// link(2) does not follow a symlink target.
	if err := os.Link(old, target); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	return nil
}

// writeEntryFile creates target, which does not exist, with size bytes
// from r.
func writeEntryFile(target string, r io.Reader, size int64) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, size); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// setMeta gives target the owner, mode, extended attributes and (but for
// directories, done last) mtime of hdr. The owner goes first: chown clears
// setuid bits and file capabilities.
func setMeta(target string, hdr *tar.Header) error {
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := os.Chmod(target, hdr.FileInfo().Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := setXattrs(target, hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	if err := setTimes(target, hdr.ModTime); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// setXattrs sets the extended attributes carried by hdr that keepXattr
// allows on target.
func setXattrs(target string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || name == "" || !keepXattr(name, v) {
			continue
		}
		if err := unix.Lsetxattr(target, name, []byte(v), 0); err != nil {
			return fmt.Errorf("set extended attribute %s: %w", name, err)
		}
	}
	return nil
}

// setTimes sets the access and modification times of target (not
// following a symlink) to mtime.
func setTimes(target string, mtime time.Time) error {
	ts := unix.NsecToTimespec(mtime.UnixNano())
	return unix.UtimesNanoAt(unix.AT_FDCWD, target, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}
