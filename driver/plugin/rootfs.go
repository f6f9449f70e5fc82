package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A task's rootfs is an overlay: the image's shared, read-only rootfs below,
// the task's own changes in dir/upper. The changes stay in the task directory,
// apart from the image, which is what a checkpoint carries to another node.
// The overlay is also what keeps the image cache intact: the files of an
// image's rootfs are hard links to the cache's unpacked layers, shared with
// other images, and the overlay never writes to its lower directory (a task
// changing a file gets a copy in its upper directory).
//
// The overlay is mounted nodev: a device node in the image or written by the
// task (the image store and checkpoints do not create them, but a cache
// from an older version may hold some) opens nothing. runc mounts the
// container's /dev over it. Set-id programs (su, ping) keep working: there
// is no nosuid.

// rootfsMountFlags are the flags of a task's overlay mount.
const rootfsMountFlags = unix.MS_NODEV

// mountRootfs mounts the task's overlay at dir/rootfs and returns that path.
func mountRootfs(lower, dir string) (string, error) {
	upper, work, target := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "rootfs")
	for _, d := range []string{upper, work, target} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", fmt.Errorf("rootfs: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", target, "overlay", rootfsMountFlags, opts); err != nil {
		return "", fmt.Errorf("rootfs: mount overlay at %s: %w", target, err)
	}
	// The rootfs directory itself is the container's "/": keep it traversable.
	if err := os.Chmod(target, 0o755); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return "", fmt.Errorf("rootfs: %w", err)
	}
	return target, nil
}

// unmountRootfs undoes mountRootfs; a rootfs that is not mounted is fine. A
// symlink in the rootfs's place is not followed.
func unmountRootfs(dir string) error {
	target := filepath.Join(dir, "rootfs")
	err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}
