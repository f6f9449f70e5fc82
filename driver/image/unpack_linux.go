package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const noFollow = unix.O_NOFOLLOW

// mkfifo creates a FIFO. It reports false (and no error) when the kernel
// does not allow it: the image still works unless a task needs that FIFO.
func (u *unpacker) mkfifo(host string, hdr *tar.Header) (bool, error) {
	if err := unix.Mkfifo(host, uint32(hdr.Mode&0o7777)); err != nil {
		if isPermission(err) {
			u.logger.Debug("cannot create FIFO", "name", hdr.Name, "error", err)
			return false, nil
		}
		return false, &os.PathError{Op: "mkfifo", Path: host, Err: err}
	}
	return true, nil
}

func lsetxattr(host, attr string, value []byte) error {
	return unix.Lsetxattr(host, attr, value, 0)
}

// setTimes sets access and modification times without following symlinks.
func setTimes(host string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if atime.IsZero() && mtime.IsZero() {
		return nil
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, host, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: host, Err: err}
	}
	return nil
}

// isPermission reports errors that mean "not allowed here" rather than
// "broken": missing privileges, unmapped ids in a user namespace, or a file
// system without extended attribute support.
func isPermission(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// linkRefused reports a hard link the file system does not make (too many
// links, another file system, protected hard links, no support), so that a
// copy takes its place.
func linkRefused(err error) bool {
	return errors.Is(err, unix.EMLINK) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EPERM) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// copyFileData copies the content of regular file src to a new file dst.
func copyFileData(src, dst string, buf []byte) error {
	in, err := os.OpenFile(src, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(out, in, buf); err != nil {
		_ = out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// copyXattrs copies the extended attributes of src to dst, without
// following symlinks. It returns how many the kernel refused to set.
func copyXattrs(src, dst string) (int, error) {
	size, err := unix.Llistxattr(src, nil)
	if err != nil || size == 0 {
		if err != nil && !isPermission(err) {
			return 0, &os.PathError{Op: "listxattr", Path: src, Err: err}
		}
		return 0, nil
	}
	names := make([]byte, size)
	size, err = unix.Llistxattr(src, names)
	if err != nil {
		return 0, &os.PathError{Op: "listxattr", Path: src, Err: err}
	}
	skipped := 0
	for _, name := range strings.Split(strings.TrimRight(string(names[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsize, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			skipped++
			continue
		}
		val := make([]byte, vsize)
		vsize, err = unix.Lgetxattr(src, name, val)
		if err != nil {
			skipped++
			continue
		}
		if err := unix.Lsetxattr(dst, name, val[:vsize], 0); err != nil {
			if !isPermission(err) {
				return skipped, &os.PathError{Op: "setxattr " + name, Path: dst, Err: err}
			}
			skipped++
		}
	}
	return skipped, nil
}

// syncFS makes everything written to the file system that holds dir
// durable: one syncfs(2) for a whole tree of new files, rather than an
// fsync per file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}
