package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"

	// maxSymlinks bounds symlink resolution of an entry's parents, like the
	// kernel's limit.
	maxSymlinks = 40
)

// errMissing reports a parent directory that does not exist when resolving
// without creating.
var errMissing = errors.New("no such directory")

// unpacker applies image layers, in order, to one directory. It does not use
// go-containerregistry's mutate.Extract: it handles hard links, whiteouts
// and unsafe paths itself.
//
// Entries are resolved inside the rootfs: a path with ".." components that
// leaves the rootfs, a parent that is a symlink to an absolute path or to a
// path outside the rootfs, or a hard link to something outside the rootfs
// are refused. The final component of an entry is never followed: an
// existing file, link or directory in its place is replaced.
type unpacker struct {
	root   string
	logger hclog.Logger
	buf    []byte

	// size counts the bytes of regular files written.
	size int64
	// skipped counts device nodes and extended attributes the kernel
	// refused (e.g. without CAP_MKNOD).
	skippedDevices int
	skippedXattrs  int

	// Per layer: paths (resolved, relative to root) the current layer
	// created, their ancestors, and directory metadata applied once the
	// layer's entries are all written.
	created map[string]bool
	touched map[string]bool
	dirs    []dirMeta
}

type dirMeta struct {
	host         string
	mode         fs.FileMode
	atime, mtime time.Time
}

func newUnpacker(root string, logger hclog.Logger) *unpacker {
	return &unpacker{root: root, logger: logger, buf: make([]byte, 1<<20)}
}

// apply writes one layer (an uncompressed tar stream). n is the layer's
// 1-based position, used in errors.
func (u *unpacker) apply(ctx context.Context, n int, r io.Reader) error {
	u.created = map[string]bool{}
	u.touched = map[string]bool{}
	u.dirs = u.dirs[:0]
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %d: read tar: %w", n, err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("layer %d: entry %q: %w", n, hdr.Name, err)
		}
	}
	// Directory modes and times last: writing entries changes mtimes and
	// a read-only directory must stay writable until its entries exist.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if err := os.Chmod(d.host, d.mode); err != nil {
			return fmt.Errorf("layer %d: chmod %s: %w", n, d.host, err)
		}
		if err := setTimes(d.host, d.atime, d.mtime); err != nil {
			return fmt.Errorf("layer %d: set times of %s: %w", n, d.host, err)
		}
	}
	return nil
}

// cleanEntryPath turns a tar entry name into a clean path relative to the
// rootfs ("" for the rootfs itself) and refuses names that leave it.
func cleanEntryPath(name string) (string, error) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	switch {
	case p == ".":
		return "", nil
	case p == ".." || strings.HasPrefix(p, "../"):
		return "", newKindError(ErrInvalid, nil, "path escapes the rootfs (the image is malformed or malicious)")
	}
	return p, nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanEntryPath(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		return u.rootEntry(hdr)
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")

	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}

	parentHost, parentRel, err := u.resolveDir(dir, true)
	if err != nil {
		return err
	}
	host := filepath.Join(parentHost, base)
	resolved := path.Join(parentRel, base)

	if fi, err := os.Lstat(host); err == nil {
		if hdr.Typeflag == tar.TypeDir && fi.IsDir() {
			// Directories merge with the lower layer's; only the
			// metadata changes. The directory counts as touched, not
			// created: an opaque whiteout above it must still hide
			// what lower layers put inside.
			u.touched[resolved] = true
			u.markCreated(resolved)
			return u.setMeta(host, hdr)
		}
		if err := removeTree(host); err != nil {
			return fmt.Errorf("replace %s: %w", resolved, err)
		}
	} else if !os.IsNotExist(err) {
		return err
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(host, 0o700); err != nil {
			return err
		}
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := u.writeFile(host, r); err != nil {
			return err
		}
		u.size += hdr.Size
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, host); err != nil {
			return err
		}
	case tar.TypeLink:
		// A hard link shares the target's inode and metadata.
		if err := u.hardlink(hdr.Linkname, host); err != nil {
			return err
		}
		u.markCreated(resolved)
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		created, err := u.mknod(host, hdr)
		if err != nil {
			return err
		}
		if !created {
			return nil
		}
	default:
		u.logger.Debug("skipping unsupported tar entry", "name", hdr.Name, "type", string(hdr.Typeflag))
		return nil
	}
	u.markCreated(resolved)
	return u.setMeta(host, hdr)
}

// rootEntry applies the metadata of the "./" entry to the rootfs itself.
func (u *unpacker) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return newKindError(ErrInvalid, nil, "the rootfs itself must be a directory, the layer has type %q", string(hdr.Typeflag))
	}
	return u.setMeta(u.root, hdr)
}

func (u *unpacker) writeFile(host string, r io.Reader) error {
	f, err := os.OpenFile(host, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(f, r, u.buf); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", host, err)
	}
	return f.Close()
}

func (u *unpacker) hardlink(linkname, host string) error {
	rel, err := cleanEntryPath(linkname)
	if err != nil {
		return newKindError(ErrInvalid, nil, "hard link target %q escapes the rootfs (the image is malformed or malicious)", linkname)
	}
	if rel == "" {
		return newKindError(ErrInvalid, nil, "hard link to the rootfs directory itself")
	}
	dir, base := path.Split(rel)
	dirHost, _, err := u.resolveDir(strings.TrimSuffix(dir, "/"), false)
	if errors.Is(err, errMissing) {
		return newKindError(ErrInvalid, nil, "hard link target %q does not exist in the rootfs", linkname)
	}
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	src := filepath.Join(dirHost, base)
	fi, err := os.Lstat(src)
	switch {
	case os.IsNotExist(err):
		return newKindError(ErrInvalid, nil, "hard link target %q does not exist in the rootfs", linkname)
	case err != nil:
		return err
	case fi.IsDir():
		return newKindError(ErrInvalid, nil, "hard link target %q is a directory", linkname)
	}
	// link(2) does not follow a symlink source: the link shares the
	// symlink's inode, which stays inside the rootfs.
	return os.Link(src, host)
}

// setMeta applies ownership, mode, extended attributes and times. Directory
// modes and times are deferred to the end of the layer.
func (u *unpacker) setMeta(host string, hdr *tar.Header) error {
	if err := os.Lchown(host, hdr.Uid, hdr.Gid); err != nil {
		if !isPermission(err) {
			return err
		}
		u.logger.Trace("cannot change owner", "path", host, "uid", hdr.Uid, "gid", hdr.Gid, "error", err)
	}
	mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	isDir := hdr.Typeflag == tar.TypeDir
	if hdr.Typeflag != tar.TypeSymlink && !isDir {
		// chmod after chown: chown clears the set-id bits.
		if err := os.Chmod(host, mode); err != nil {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := lsetxattr(host, attr, []byte(v)); err != nil {
			if !isPermission(err) {
				return fmt.Errorf("set extended attribute %s: %w", attr, err)
			}
			u.skippedXattrs++
			u.logger.Trace("cannot set extended attribute", "path", host, "attr", attr, "error", err)
		}
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if isDir {
		u.dirs = append(u.dirs, dirMeta{host: host, mode: mode, atime: atime, mtime: hdr.ModTime})
		return nil
	}
	return setTimes(host, atime, hdr.ModTime)
}

// markCreated records that the current layer wrote rel, so whiteouts in the
// same layer (which only apply to lower layers) leave it alone.
func (u *unpacker) markCreated(rel string) {
	u.created[rel] = true
	for p := path.Dir(rel); p != "." && p != "/"; p = path.Dir(p) {
		if u.touched[p] {
			break
		}
		u.touched[p] = true
	}
}

// whiteout handles ".wh.<name>" (remove <name> of lower layers) and
// ".wh..wh..opq" (hide everything lower layers put in the directory).
func (u *unpacker) whiteout(dir, base string) error {
	if base == whiteoutOpaque {
		dirHost, dirRel, err := u.resolveDir(dir, true)
		if err != nil {
			return err
		}
		entries, err := os.ReadDir(dirHost)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := u.removeLower(path.Join(dirRel, e.Name()), filepath.Join(dirHost, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		// Other ".wh..wh." entries are aufs bookkeeping.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return newKindError(ErrInvalid, nil, "invalid whiteout name %q", base)
	}
	dirHost, dirRel, err := u.resolveDir(dir, false)
	if errors.Is(err, errMissing) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	host := filepath.Join(dirHost, name)
	if _, err := os.Lstat(host); os.IsNotExist(err) {
		return nil
	}
	return u.removeLower(path.Join(dirRel, name), host)
}

// removeLower removes what lower layers put at rel, keeping whatever the
// current layer wrote there.
func (u *unpacker) removeLower(rel, host string) error {
	if u.created[rel] && !u.touched[rel] {
		return nil
	}
	if !u.touched[rel] {
		return removeTree(host)
	}
	entries, err := os.ReadDir(host)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := u.removeLower(path.Join(rel, e.Name()), filepath.Join(host, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// resolveDir returns the host path of directory rel (relative to the rootfs)
// and its symlink-free relative path. Symlinks among the components are
// followed when they stay inside the rootfs; an absolute symlink or one that
// climbs out of the rootfs is refused. Missing directories are created with
// mode 0755 when create is set; otherwise errMissing is returned.
func (u *unpacker) resolveDir(rel string, create bool) (string, string, error) {
	var parts []string
	if rel != "" {
		parts = strings.Split(rel, "/")
	}
	resolved := ""
	links := 0
	for len(parts) > 0 {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			// Only symlink targets bring ".." here (entry names are
			// clean).
			if resolved == "" {
				return "", "", newKindError(ErrInvalid, nil, "a symlink among the parents points outside the rootfs")
			}
			resolved = path.Dir(resolved)
			if resolved == "." {
				resolved = ""
			}
			continue
		}
		next := path.Join(resolved, c)
		host := filepath.Join(u.root, next)
		fi, err := os.Lstat(host)
		switch {
		case os.IsNotExist(err):
			if !create {
				return "", "", errMissing
			}
			if err := os.Mkdir(host, 0o755); err != nil {
				return "", "", err
			}
			// Exact mode whatever the umask.
			if err := os.Chmod(host, 0o755); err != nil {
				return "", "", err
			}
			u.markCreated(next)
			resolved = next
		case err != nil:
			return "", "", err
		case fi.IsDir():
			resolved = next
		case fi.Mode()&fs.ModeSymlink != 0:
			links++
			if links > maxSymlinks {
				return "", "", newKindError(ErrInvalid, nil, "too many levels of symlinks in the parents")
			}
			target, err := os.Readlink(host)
			if err != nil {
				return "", "", err
			}
			if path.IsAbs(target) {
				return "", "", newKindError(ErrInvalid, nil, "parent %q is a symlink to %q, which points outside the rootfs (the image is malformed or malicious)", next, target)
			}
			parts = append(strings.Split(target, "/"), parts...)
		default:
			return "", "", newKindError(ErrInvalid, nil, "parent %q is not a directory", next)
		}
	}
	return filepath.Join(u.root, resolved), resolved, nil
}
