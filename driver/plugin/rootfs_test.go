package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// TestRootfs_MountedNodev: a task's overlay is mounted nodev, so that a
// device node in its image (or one the task makes) opens nothing, while
// set-id programs keep their bits.
func TestRootfs_MountedNodev(t *testing.T) {
	requireRoot(t)
	lower := t.TempDir()
	// /dev/null's numbers: harmless, and always there to open.
	must.NoError(t, unix.Mknod(filepath.Join(lower, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must.NoError(t, os.WriteFile(filepath.Join(lower, "su"), []byte("#!/bin/sh\n"), 0o755))
	must.NoError(t, os.Chmod(filepath.Join(lower, "su"), 0o755|os.ModeSetuid))

	dir := filepath.Join(t.TempDir(), "task")
	must.NoError(t, os.Mkdir(dir, 0o700))
	target, err := mountRootfs(lower, dir)
	must.NoError(t, err)
	t.Cleanup(func() { _ = unmountRootfs(dir) })

	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(target))
	must.NoError(t, err)
	must.Len(t, 1, mounts)
	must.Eq(t, "overlay", mounts[0].FSType)
	opts := strings.Split(mounts[0].Options, ",")
	must.SliceContains(t, opts, "nodev")
	must.SliceNotContains(t, opts, "nosuid")

	_, err = os.OpenFile(filepath.Join(target, "null"), os.O_RDWR, 0)
	must.ErrorIs(t, err, unix.EACCES)
	fi, err := os.Stat(filepath.Join(target, "su"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeSetuid != 0)

	must.NoError(t, unmountRootfs(dir))
	mounted, err := mountinfo.Mounted(target)
	must.NoError(t, err)
	must.False(t, mounted)
}
