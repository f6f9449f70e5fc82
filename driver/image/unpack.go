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
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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

// unpacker writes one image layer (a tar stream) into an empty directory of
// its own, so that the layer can be shared by every image that has it. It
// does not use go-containerregistry's mutate.Extract: it handles hard links,
// whiteouts and unsafe paths itself.
//
// What a layer cannot apply on its own is kept for the assembly of a rootfs
// (see assembler):
//
//   - whiteouts stay in the layer as OCI marker files: an empty ".wh.<name>"
//     next to where <name> was, and ".wh..wh..opq" in a directory that hides
//     what lower layers put there;
//   - directories the layer has no entry for (parents of its entries, made
//     with mode 0755) are listed as implicit: their metadata belongs to
//     lower layers;
//   - a hard link to a file the layer does not have (one of a lower layer)
//     is recorded with its target, to be linked in the rootfs; links are
//     kept in entry order, and a link to such a link records the lower
//     file.
//
// What the layer may create is filtered (see filter.go): character and
// block devices are not created (a character device 0:0 is a whiteout, kept
// as a marker), and extended attributes other than those KeepXattr allows
// are dropped. The layer's size is bounded (maxSize) and the free space of
// its file system checked as files are written (checkSpace).
//
// Entries are resolved inside the layer: an entry or hard link name with
// ".." components that leave it is refused, and symlinks among the parents
// resolve as they would inside the container (see resolveDir). The final
// component of an entry is never followed: an existing file, link or
// directory in its place is replaced.
type unpacker struct {
	root   string
	logger hclog.Logger
	buf    []byte

	// size counts the bytes of regular files written.
	size int64
	// maxSize, if positive, bounds size: a file that would take it past
	// fails the layer with a sizeLimitError.
	maxSize int64
	// checkSpace, if set, fails unless need more bytes can be written;
	// it runs whenever spaceCheckInterval bytes more are to be written
	// since the last check. spaceChecked is size at that check.
	checkSpace   func(need int64) error
	spaceChecked int64

	// skippedDevices counts the device nodes not created (and hard links
	// to them); skippedXattrs the extended attributes the kernel refused
	// (not permitted or not supported); droppedXattrs those KeepXattr
	// does not allow.
	skippedDevices int
	skippedXattrs  int
	droppedXattrs  int
	// skipped holds the paths (relative to root) of the entries not
	// created: device nodes and overlay whiteouts, which hard links
	// cannot point at.
	skipped map[string]bool

	// implicit holds the directories (relative to root, "" for root)
	// that no entry of the layer declared.
	implicit map[string]bool
	// links maps the path of a hard link to a file of a lower layer to
	// that file, in the order of the entries.
	links map[string]lowerLink
	seq   int
	// dirs maps the directories the layer declared (relative to root) to
	// the metadata of their last declaration, applied once the layer's
	// entries are all written.
	dirs map[string]dirMeta
}

// lowerLink is the target of a hard link to a lower layer, and the link's
// position among the layer's links.
type lowerLink struct {
	target string
	seq    int
}

type dirMeta struct {
	mode         fs.FileMode
	atime, mtime time.Time
}

func newUnpacker(root string, logger hclog.Logger) *unpacker {
	return &unpacker{
		root:     root,
		logger:   logger,
		buf:      make([]byte, 1<<20),
		implicit: map[string]bool{"": true},
		links:    map[string]lowerLink{},
		dirs:     map[string]dirMeta{},
		skipped:  map[string]bool{},
	}
}

// apply writes the layer (an uncompressed tar stream). n is the layer's
// 1-based position in its image, used in errors. An unpacker applies one
// layer only.
func (u *unpacker) apply(ctx context.Context, n int, r io.Reader) error {
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
	// Directory modes and times last, deepest first: writing entries
	// changes mtimes and a read-only directory must stay writable until
	// its entries exist. A path sorts after its parent's, so reverse
	// order puts children first.
	paths := make([]string, 0, len(u.dirs))
	for p := range u.dirs {
		paths = append(paths, p)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for _, p := range paths {
		d, host := u.dirs[p], filepath.Join(u.root, p)
		if err := os.Chmod(host, d.mode); err != nil {
			return fmt.Errorf("layer %d: chmod %s: %w", n, host, err)
		}
		if err := setTimes(host, d.atime, d.mtime); err != nil {
			return fmt.Errorf("layer %d: set times of %s: %w", n, host, err)
		}
	}
	return nil
}

// meta describes the unpacked layer for its layer.json.
func (u *unpacker) meta(diffID v1.Hash) *layerMeta {
	m := &layerMeta{DiffID: diffID, Size: u.size, SkippedDevices: u.skippedDevices}
	for p := range u.implicit {
		m.Implicit = append(m.Implicit, p)
	}
	sort.Strings(m.Implicit)
	for p, l := range u.links {
		m.Links = append(m.Links, layerLink{Path: p, Target: l.target})
	}
	sort.Slice(m.Links, func(i, j int) bool { return u.links[m.Links[i].Path].seq < u.links[m.Links[j].Path].seq })
	return m
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
			// A directory declared again (or after its entries): only
			// the metadata changes, and it is the layer's own now.
			delete(u.implicit, resolved)
			return u.setMeta(host, resolved, hdr)
		}
		if err := removeTree(host); err != nil {
			return fmt.Errorf("replace %s: %w", resolved, err)
		}
		u.forget(resolved)
	} else if !os.IsNotExist(err) {
		return err
	}
	// A hard link to a lower layer recorded at this path is replaced,
	// and so is a device node not created.
	delete(u.links, resolved)
	delete(u.skipped, resolved)

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(host, 0o700); err != nil {
			return err
		}
	case tar.TypeReg, tar.TypeGNUSparse: // the reader turns the old TypeRegA into TypeReg
		if err := u.reserve(hdr.Size); err != nil {
			return err
		}
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
		return u.hardlink(hdr.Linkname, host, resolved)
	case tar.TypeChar, tar.TypeBlock:
		u.skipped[resolved] = true
		if IsOverlayWhiteout(hdr) {
			// What it replaced in this layer is gone; what lower
			// layers have there is hidden by the marker.
			return u.whiteout(dir, whiteoutPrefix+base)
		}
		u.skippedDevices++
		u.logger.Debug("not creating device node", "name", hdr.Name, "type", string(hdr.Typeflag),
			"major", hdr.Devmajor, "minor", hdr.Devminor)
		return nil
	case tar.TypeFifo:
		created, err := u.mkfifo(host, hdr)
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
	return u.setMeta(host, resolved, hdr)
}

// forget drops what was recorded about rel and below after it was removed.
func (u *unpacker) forget(rel string) {
	under := func(p string) bool { return p == rel || strings.HasPrefix(p, rel+"/") }
	for p := range u.implicit {
		if under(p) {
			delete(u.implicit, p)
		}
	}
	for p := range u.links {
		if under(p) {
			delete(u.links, p)
		}
	}
	for p := range u.dirs {
		if under(p) {
			delete(u.dirs, p)
		}
	}
	for p := range u.skipped {
		if under(p) {
			delete(u.skipped, p)
		}
	}
}

// reserve checks that a file of size bytes may be written: that the layer
// stays within maxSize, and, every spaceCheckInterval bytes, that the file
// system has room for it.
func (u *unpacker) reserve(size int64) error {
	if u.maxSize > 0 && u.size+size > u.maxSize {
		return &sizeLimitError{limit: u.maxSize, what: "its files"}
	}
	if u.checkSpace != nil && u.size+size-u.spaceChecked >= spaceCheckInterval {
		if err := u.checkSpace(size); err != nil {
			return err
		}
		u.spaceChecked = u.size
	}
	return nil
}

// rootEntry applies the metadata of the "./" entry to the layer's root.
func (u *unpacker) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return newKindError(ErrInvalid, nil, "the rootfs itself must be a directory, the layer has type %q", string(hdr.Typeflag))
	}
	delete(u.implicit, "")
	return u.setMeta(u.root, "", hdr)
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

// hardlink links host (at resolved) to linkname. A target this layer wrote
// is linked at once; any other is a file of a lower layer, linked when the
// rootfs is assembled.
func (u *unpacker) hardlink(linkname, host, resolved string) error {
	rel, err := cleanEntryPath(linkname)
	if err != nil {
		return newKindError(ErrInvalid, nil, "hard link target %q escapes the rootfs (the image is malformed or malicious)", linkname)
	}
	if rel == "" {
		return newKindError(ErrInvalid, nil, "hard link to the rootfs directory itself")
	}
	dir, base := path.Split(rel)
	dirHost, dirRel, err := u.resolveDir(strings.TrimSuffix(dir, "/"), false)
	if errors.Is(err, errMissing) {
		// dirRel is as far as the layer's own symlinks lead; the lower
		// layers resolve the rest.
		u.linkLower(resolved, dirRel+"/"+base)
		return nil
	}
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	if target := path.Join(dirRel, base); u.skipped[target] {
		// A link to a device node that was not created is not
		// created either.
		u.skipped[resolved] = true
		u.skippedDevices++
		u.logger.Debug("not creating hard link to a device node", "path", resolved, "target", target)
		return nil
	}
	src := filepath.Join(dirHost, base)
	fi, err := os.Lstat(src)
	switch {
	case os.IsNotExist(err), strings.HasPrefix(base, whiteoutPrefix):
		// Whiteout markers are no files of the image.
		u.linkLower(resolved, path.Join(dirRel, base))
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return newKindError(ErrInvalid, nil, "hard link target %q is a directory", linkname)
	}
	// link(2) does not follow a symlink source: the link shares the
	// symlink's inode, which stays inside the layer.
	return os.Link(src, host)
}

// linkLower records a hard link at rel to target, a file of a lower layer
// unless target is itself such a link of this layer: then the link is to
// that link's target, so that every recorded target is a lower file.
func (u *unpacker) linkLower(rel, target string) {
	if l, ok := u.links[target]; ok {
		target = l.target
	}
	u.seq++
	u.links[rel] = lowerLink{target: target, seq: u.seq}
}

// setMeta applies ownership, mode, extended attributes and times to the
// entry at host (rel in the layer). Directory modes and times are deferred
// to the end of the layer.
func (u *unpacker) setMeta(host, rel string, hdr *tar.Header) error {
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
		if !KeepXattr(attr) {
			u.droppedXattrs++
			u.logger.Trace("dropping extended attribute", "path", rel, "attr", attr)
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
	if isDir && isOverlayOpaque(hdr) {
		// Dropped as an attribute, kept as what it means.
		if err := u.whiteout(rel, whiteoutOpaque); err != nil {
			return err
		}
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if isDir {
		u.dirs[rel] = dirMeta{mode: mode, atime: atime, mtime: hdr.ModTime}
		return nil
	}
	return setTimes(host, atime, hdr.ModTime)
}

// whiteout records ".wh.<name>" (remove <name> of lower layers) and
// ".wh..wh..opq" (hide everything lower layers put in the directory) as
// marker files for the assembly of the rootfs. They never hide what this
// layer itself writes.
func (u *unpacker) whiteout(dir, base string) error {
	if base != whiteoutOpaque {
		if strings.HasPrefix(base, whiteoutMeta) {
			// Other ".wh..wh." entries are aufs bookkeeping.
			return nil
		}
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" || name == "." || name == ".." {
			return newKindError(ErrInvalid, nil, "invalid whiteout name %q", base)
		}
	}
	dirHost, _, err := u.resolveDir(dir, true)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dirHost, base), os.O_WRONLY|os.O_CREATE|noFollow, 0o600)
	if err != nil {
		return fmt.Errorf("record whiteout: %w", err)
	}
	return f.Close()
}

// resolveDir resolves directory rel inside the layer (see resolveDir);
// directories it creates are implicit.
func (u *unpacker) resolveDir(rel string, create bool) (string, string, error) {
	var created func(string)
	if create {
		created = func(p string) { u.implicit[p] = true }
	}
	return resolveDir(u.root, rel, create, created)
}

// resolveDir returns the host path of directory rel (relative to root) and
// its symlink-free relative path. Symlinks among the components resolve as
// the kernel would resolve them inside the container whose root is root: an
// absolute target starts again from root, and ".." at root stays there, so
// nothing outside root is ever reached. Missing directories are created with
// mode 0755 when create is set (and passed to created, if not nil);
// otherwise errMissing is returned, with the path resolved so far followed
// by the rest of the components as they are.
func resolveDir(root, rel string, create bool, created func(string)) (string, string, error) {
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
			if resolved = path.Dir(resolved); resolved == "." {
				resolved = ""
			}
			continue
		}
		next := path.Join(resolved, c)
		host := filepath.Join(root, next)
		fi, err := os.Lstat(host)
		switch {
		case os.IsNotExist(err):
			if !create {
				return "", strings.Join(append([]string{next}, parts...), "/"), errMissing
			}
			if err := mkdir755(host); err != nil {
				return "", "", err
			}
			if created != nil {
				created(next)
			}
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
				resolved = ""
			}
			parts = append(strings.Split(target, "/"), parts...)
		default:
			return "", "", newKindError(ErrInvalid, nil, "parent %q is not a directory", next)
		}
	}
	return filepath.Join(root, resolved), resolved, nil
}
