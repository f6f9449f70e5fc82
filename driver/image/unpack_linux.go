package image

import (
	"archive/tar"
	"errors"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const noFollow = unix.O_NOFOLLOW

// mknod creates a device node or fifo. It reports false (and no error) when
// the kernel does not allow it, e.g. without CAP_MKNOD in a user namespace:
// the image still works unless a task needs that node.
func (u *unpacker) mknod(host string, hdr *tar.Header) (bool, error) {
	perm := uint32(hdr.Mode & 0o7777)
	var err error
	switch hdr.Typeflag {
	case tar.TypeFifo:
		err = unix.Mkfifo(host, perm)
	case tar.TypeChar:
		err = unix.Mknod(host, unix.S_IFCHR|perm, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))))
	case tar.TypeBlock:
		err = unix.Mknod(host, unix.S_IFBLK|perm, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))))
	}
	if err != nil {
		if isPermission(err) {
			u.skippedDevices++
			u.logger.Debug("skipping device node", "name", hdr.Name, "error", err)
			return false, nil
		}
		return false, &os.PathError{Op: "mknod", Path: host, Err: err}
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
