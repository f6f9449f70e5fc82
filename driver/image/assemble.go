package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// assembler builds the rootfs of an image from its unpacked layers, lowest
// first, the way a flattening unpack of the layers would: whiteouts hide
// what lower layers put there, directories merge, anything else replaces
// what is in its place, and parents resolve through the symlinks lower
// layers made, as they would inside the container (see resolveDir).
//
// Files, symlinks and FIFOs (and device nodes, in layers unpacked before
// the unpacker stopped creating them) are hard links to the layer's inodes
// (copies where the file system refuses the link, e.g. at its link limit),
// so a layer's data is stored once however many images use it. That is safe
// because nothing writes to a rootfs once it is assembled: a task only ever
// sees it as the read-only lower directory of its own overlay, and changes
// go to the task's upper directory. Directories are the rootfs's own, with
// the metadata of the layer that declared them last.
type assembler struct {
	root   string
	logger hclog.Logger
	buf    []byte
	// link makes hard links (os.Link; tests make it refuse).
	link func(oldname, newname string) error

	// copies maps a layer inode that had to be copied to its first copy,
	// so that hard links stay hard links in the copy.
	copies map[fileKey]fileCopy
	// linked and copied count the entries placed each way; skippedXattrs
	// the extended attributes of copies the kernel refused.
	linked, copied int
	skippedXattrs  int

	// Per layer: its implicit directories, and the directories whose
	// metadata is copied once the layer is in place.
	implicit map[string]bool
	dirs     []dirCopy
}

type fileKey struct{ dev, ino uint64 }

// fileCopy is where a copy was made, and its inode: a later layer may have
// put another file at that path since.
type fileCopy struct {
	path string
	key  fileKey
}

// dirCopy is a rootfs directory that takes the metadata of a layer's.
type dirCopy struct{ host, src string }

func newAssembler(root string, logger hclog.Logger) *assembler {
	return &assembler{root: root, logger: logger, link: os.Link, copies: map[fileKey]fileCopy{}}
}

// apply adds the unpacked layer in layerRoot (described by m) to the
// rootfs. n is the layer's 1-based position, used in errors.
//
// The result is that of applying the layer's entries in order: its hard
// links to lower files are made first, in a staging directory next to the
// rootfs, as the rootfs is before the layer's whiteouts and files change
// it; they are moved into place once those are merged (the unpacker
// dropped the links that later entries replace).
func (a *assembler) apply(ctx context.Context, n int, layerRoot string, m *layerMeta) error {
	a.implicit = make(map[string]bool, len(m.Implicit))
	for _, p := range m.Implicit {
		a.implicit[p] = true
	}
	a.dirs = a.dirs[:0]
	if !a.implicit[""] {
		a.dirs = append(a.dirs, dirCopy{host: a.root, src: layerRoot})
	}
	staging, err := a.stageLinks(m.Links)
	if staging != "" {
		defer func() {
			// A leftover goes when the store starts again.
			if err := removeTree(staging); err != nil {
				a.logger.Warn("cannot remove staged hard links", "path", staging, "error", err)
			}
		}()
	}
	if err != nil {
		return fmt.Errorf("layer %d: %w", n, err)
	}
	if err := a.merge(ctx, layerRoot, a.root, "", "", false); err != nil {
		return fmt.Errorf("layer %d: %w", n, err)
	}
	for i, l := range m.Links {
		if err := a.placeStaged(stagedLink(staging, i), l.Path); err != nil {
			return fmt.Errorf("layer %d: entry %q: %w", n, l.Path, err)
		}
	}
	// Directory metadata last, deepest first: adding entries changes
	// mtimes, and a read-only directory must stay writable until then.
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		if err := a.copyMeta(d.src, d.host); err != nil {
			return fmt.Errorf("layer %d: %w", n, err)
		}
	}
	return nil
}

// merge adds the content of layer directory lhost (at lrel in the layer) to
// rootfs directory rhost (at rrel). fresh means rhost was just created, so
// it holds nothing a whiteout could hide or an entry could replace.
func (a *assembler) merge(ctx context.Context, lhost, rhost, lrel, rrel string, fresh bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(lhost)
	if err != nil {
		return err
	}
	if !fresh {
		// Whiteouts first: they hide lower layers only, never what this
		// layer puts in the same directory.
		for _, e := range entries {
			if name := e.Name(); strings.HasPrefix(name, whiteoutPrefix) {
				if err := a.whiteout(rhost, name); err != nil {
					return fmt.Errorf("whiteout %q: %w", path.Join(lrel, name), err)
				}
			}
		}
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, whiteoutPrefix) {
			continue
		}
		lchild, rchild := filepath.Join(lhost, name), filepath.Join(rhost, name)
		crel, rcrel := path.Join(lrel, name), path.Join(rrel, name)
		if !e.IsDir() {
			if err := a.place(lchild, rchild, fresh); err != nil {
				return fmt.Errorf("path %q: %w", crel, err)
			}
			continue
		}
		if a.implicit[crel] {
			if err := a.mergeImplicit(ctx, lchild, rchild, crel, rcrel, fresh); err != nil {
				return err
			}
			continue
		}
		// A directory of the layer's own: merged with a directory below,
		// replacing anything else.
		childFresh := fresh
		if !fresh {
			fi, err := os.Lstat(rchild)
			switch {
			case os.IsNotExist(err):
				childFresh = true
			case err != nil:
				return err
			case !fi.IsDir():
				if err := removeTree(rchild); err != nil {
					return fmt.Errorf("replace %s: %w", rcrel, err)
				}
				childFresh = true
			}
		}
		if childFresh {
			if err := os.Mkdir(rchild, 0o700); err != nil {
				return err
			}
		}
		a.dirs = append(a.dirs, dirCopy{host: rchild, src: lchild})
		if err := a.merge(ctx, lchild, rchild, crel, rcrel, childFresh); err != nil {
			return err
		}
	}
	return nil
}

// mergeImplicit merges a directory the layer only has as the parent of its
// entries: it goes through what the rootfs has at that path, following a
// symlink that stays inside the rootfs, and is created (mode 0755) only if
// missing and the layer puts something in it.
func (a *assembler) mergeImplicit(ctx context.Context, lhost, rhost, lrel, rrel string, fresh bool) error {
	if fresh {
		if !a.hasContent(lhost, lrel) {
			return nil
		}
		if err := mkdir755(rhost); err != nil {
			return err
		}
		return a.merge(ctx, lhost, rhost, lrel, rrel, true)
	}
	fi, err := os.Lstat(rhost)
	switch {
	case os.IsNotExist(err):
		if !a.hasContent(lhost, lrel) {
			return nil // only whiteouts, with nothing below to hide
		}
		if err := mkdir755(rhost); err != nil {
			return err
		}
		return a.merge(ctx, lhost, rhost, lrel, rrel, true)
	case err != nil:
		return err
	case fi.IsDir():
		return a.merge(ctx, lhost, rhost, lrel, rrel, false)
	case fi.Mode()&os.ModeSymlink != 0:
		host, resolved, err := resolveDir(a.root, rrel, true, nil)
		if err != nil {
			return fmt.Errorf("path %q: %w", lrel, err)
		}
		return a.merge(ctx, lhost, host, lrel, resolved, false)
	default:
		return newKindError(ErrInvalid, nil, "parent %q is not a directory", rrel)
	}
}

// hasContent reports whether layer directory lhost holds anything but
// whiteouts and implicit directories with nothing in them.
func (a *assembler) hasContent(lhost, lrel string) bool {
	entries, err := os.ReadDir(lhost)
	if err != nil {
		return true // let the merge report it
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, whiteoutPrefix) {
			continue
		}
		crel := path.Join(lrel, name)
		if !e.IsDir() || !a.implicit[crel] || a.hasContent(filepath.Join(lhost, name), crel) {
			return true
		}
	}
	return false
}

// whiteout applies marker name of a layer directory to rootfs directory
// rhost.
func (a *assembler) whiteout(rhost, name string) error {
	if name == whiteoutOpaque {
		entries, err := os.ReadDir(rhost)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := removeTree(filepath.Join(rhost, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	target := filepath.Join(rhost, strings.TrimPrefix(name, whiteoutPrefix))
	if _, err := os.Lstat(target); os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	return removeTree(target)
}

// place puts a layer's file, symlink or device node at dst, replacing what
// is there.
func (a *assembler) place(src, dst string, fresh bool) error {
	err := a.link(src, dst)
	if errors.Is(err, unix.EEXIST) && !fresh {
		if err := removeTree(dst); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
		err = a.link(src, dst)
	}
	if err == nil {
		a.linked++
		return nil
	}
	if !linkRefused(err) {
		return err
	}
	return a.copy(src, dst)
}

// stageLinks links the targets of a layer's hard links to lower files, in
// order, into a new directory next to the rootfs (on its file system, out
// of the way of the layer's entries), and returns that directory ("" when
// there are no links).
func (a *assembler) stageLinks(links []layerLink) (string, error) {
	if len(links) == 0 {
		return "", nil
	}
	staging, err := os.MkdirTemp(filepath.Dir(a.root), tmpPrefix+"links-")
	if err != nil {
		return "", err
	}
	for i, l := range links {
		src, err := a.lowerFile(l.Target)
		if err != nil {
			return staging, fmt.Errorf("entry %q: %w", l.Path, err)
		}
		if err := a.place(src, stagedLink(staging, i), true); err != nil {
			return staging, fmt.Errorf("entry %q: %w", l.Path, err)
		}
	}
	return staging, nil
}

func stagedLink(staging string, i int) string { return filepath.Join(staging, strconv.Itoa(i)) }

// lowerFile returns the host path of target, a file (not a directory) of
// the rootfs.
func (a *assembler) lowerFile(target string) (string, error) {
	missing := newKindError(ErrInvalid, nil, "hard link target %q does not exist in the rootfs", target)
	dir, base := path.Split(target)
	dirHost, _, err := resolveDir(a.root, strings.TrimSuffix(dir, "/"), false, nil)
	if errors.Is(err, errMissing) {
		return "", missing
	}
	if err != nil {
		return "", fmt.Errorf("hard link target %q: %w", target, err)
	}
	src := filepath.Join(dirHost, base)
	fi, err := os.Lstat(src)
	switch {
	case os.IsNotExist(err):
		return "", missing
	case err != nil:
		return "", err
	case fi.IsDir():
		return "", newKindError(ErrInvalid, nil, "hard link target %q is a directory", target)
	}
	return src, nil
}

// placeStaged moves a staged hard link to rel in the rootfs, replacing what
// is there.
func (a *assembler) placeStaged(staged, rel string) error {
	dir, base := path.Split(rel)
	parent, _, err := resolveDir(a.root, strings.TrimSuffix(dir, "/"), true, nil)
	if err != nil {
		return err
	}
	dst := filepath.Join(parent, base)
	// rename(2) replaces anything but a directory.
	if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
		if err := removeTree(dst); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	return os.Rename(staged, dst)
}

// copy copies a layer's file, symlink or device node to dst with its
// metadata, for when it cannot be linked.
func (a *assembler) copy(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: src, Err: err}
	}
	key := fileKey{dev: uint64(st.Dev), ino: st.Ino}
	if first, ok := a.copies[key]; ok && st.Nlink > 1 {
		// Only if the copy is still there.
		if k, err := inode(first.path); err == nil && k == first.key && a.link(first.path, dst) == nil {
			a.copied++
			return nil
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if a.buf == nil {
			a.buf = make([]byte, 1<<20)
		}
		if err := copyFileData(src, dst, a.buf); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	case unix.S_IFIFO, unix.S_IFCHR, unix.S_IFBLK:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return &os.PathError{Op: "mknod", Path: dst, Err: err}
		}
	default:
		a.logger.Debug("skipping unsupported file type", "path", src, "mode", st.Mode)
		return nil
	}
	if err := a.copyMeta(src, dst); err != nil {
		return err
	}
	if st.Nlink > 1 {
		k, err := inode(dst)
		if err != nil {
			return err
		}
		a.copies[key] = fileCopy{path: dst, key: k}
	}
	a.copied++
	return nil
}

// inode identifies the file at host, without following a symlink.
func inode(host string) (fileKey, error) {
	var st unix.Stat_t
	if err := unix.Lstat(host, &st); err != nil {
		return fileKey{}, &os.PathError{Op: "lstat", Path: host, Err: err}
	}
	return fileKey{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// copyMeta gives dst the owner, mode, extended attributes and times of src.
func (a *assembler) copyMeta(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: src, Err: err}
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		if !isPermission(err) {
			return err
		}
		a.logger.Trace("cannot change owner", "path", dst, "uid", st.Uid, "gid", st.Gid, "error", err)
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink {
		// chmod after chown: chown clears the set-id bits.
		if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
			return &os.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	n, err := copyXattrs(src, dst)
	if err != nil {
		return err
	}
	a.skippedXattrs += n
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: dst, Err: err}
	}
	return nil
}

func mkdir755(host string) error {
	if err := os.Mkdir(host, 0o755); err != nil {
		return err
	}
	// Exact mode whatever the umask.
	return os.Chmod(host, 0o755)
}
