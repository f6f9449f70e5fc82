package checkpoint

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// paxXattr prefixes the PAX records that carry extended attributes.
const paxXattr = "SCHILY.xattr."

// droppedXattrs are not packed: they hold file handles of this node's
// image filesystem, which mean nothing under another lower directory, and
// overlayfs copes with their absence.
var droppedXattrs = map[string]bool{
	"trusted.overlay.origin": true,
	"trusted.overlay.impure": true,
}

// packTree writes the tree at root to w as a PAX tar: regular files,
// directories, symlinks, hard links, character and block devices (overlay
// whiteouts are 0:0 character devices) and FIFOs, with their modes,
// owners, mtimes and extended attributes (the overlay's opaque marker
// among them). Sockets are skipped: they cannot be archived, and a
// restored process binds its own. The root itself is the entry "./".
func packTree(ctx context.Context, root string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := make(map[fileID]string)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		return packEntry(tw, path, filepath.ToSlash(rel), links)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// fileID identifies an inode, to find hard links.
type fileID struct{ dev, ino uint64 }

// packEntry writes the entry for path, named rel, to tw.
func packEntry(tw *tar.Writer, path, rel string, links map[fileID]string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()),
		Format:  tar.FormatPAX,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		if rel == "." {
			hdr.Name = "./"
		} else {
			hdr.Name = rel + "/"
		}
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("read link %s: %w", rel, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil
	}
	if hdr.Typeflag != tar.TypeDir && st.Nlink > 1 {
		id := fileID{dev: st.Dev, ino: st.Ino}
		if first, ok := links[id]; ok {
			return tw.WriteHeader(&tar.Header{
				Typeflag: tar.TypeLink,
				Name:     rel,
				Linkname: first,
				Format:   tar.FormatPAX,
			})
		}
		links[id] = rel
	}
	xattrs, err := readXattrs(path)
	if err != nil {
		return fmt.Errorf("extended attributes of %s: %w", rel, err)
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for k, v := range xattrs {
			hdr.PAXRecords[paxXattr+k] = v
		}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write header of %s: %w", rel, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", rel, err)
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	return nil
}

// readXattrs returns the extended attributes of path (not following a
// symlink), less droppedXattrs.
func readXattrs(path string) (map[string]string, error) {
	buf := make([]byte, 1024)
	var n int
	for {
		var err error
		n, err = unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		break
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || droppedXattrs[name] {
			continue
		}
		val, err := getXattr(path, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", name, err)
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[name] = val
	}
	return out, nil
}

func getXattr(path, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			size, serr := unix.Lgetxattr(path, name, nil)
			if serr != nil {
				return "", serr
			}
			buf = make([]byte, size+1)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}
