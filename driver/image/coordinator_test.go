package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

const testGCDelay = 100 * time.Millisecond

// layoutWithTwoImages writes two images sharing the busybox layer.
func layoutWithTwoImages(t *testing.T) (dir string, a, b v1.Image) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "layout")
	a = testutil.BusyboxImage(t, linuxAMD64)
	b, err := testutil.ImageFromLayers(linuxAMD64, v1.Config{Cmd: []string{"/bin/true"}}, mustLayers(t, a)...)
	must.NoError(t, err)
	testutil.WriteLayout(t, dir, "a", a)
	testutil.WriteLayout(t, dir, "b", b)
	return dir, a, b
}

func pullLayout(t *testing.T, s *Store, dir, tag string) *Image {
	t.Helper()
	img, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir+":"+tag), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	return img
}

func gone(s *Store, img *Image) func() bool {
	return func() bool {
		_, ok := s.Lookup(img.Digest)
		// The manifest blob goes last (after the rootfs).
		return !ok && !exists(img.RootFS) && !exists(s.metaPath(img.Digest)) && !exists(s.blobPath(img.Digest))
	}
}

func TestGC_ReleaseRemovesAfterDelay(t *testing.T) {
	dir, a, b := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: testGCDelay})
	// Like the driver: acquire right after pulling (a pulled image nobody
	// acquires is collected after the delay too).
	imgA := pullLayout(t, s, dir, "a")
	s.Acquire(imgA.Digest)
	s.Acquire(imgA.Digest)
	imgB := pullLayout(t, s, dir, "b")
	s.Acquire(imgB.Digest)

	s.Release(imgA.Digest)
	time.Sleep(3 * testGCDelay)
	_, ok := s.Lookup(imgA.Digest)
	must.True(t, ok, must.Sprint("still used by one task"))

	s.Release(imgA.Digest)
	eventually(t, 2*time.Second, gone(s, imgA), "image a to be removed")

	// Blobs only image a used are gone; the shared layer stays for b.
	ma, err := a.Manifest()
	must.NoError(t, err)
	must.False(t, exists(s.blobPath(imgA.Digest)))
	must.False(t, exists(s.blobPath(ma.Config.Digest)))
	must.True(t, exists(s.blobPath(ma.Layers[0].Digest)))
	must.True(t, exists(imgB.RootFS))

	s.Release(imgB.Digest)
	eventually(t, 2*time.Second, gone(s, imgB), "image b to be removed")
	entries, err := os.ReadDir(s.blobDir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
	_ = b

	// Pulling again after removal rebuilds the image.
	again := pullLayout(t, s, dir, "a")
	must.Eq(t, imgA.RootFS, again.RootFS)
	checkBusyboxRootFS(t, again)
}

func TestGC_AcquireBeforeDelayKeeps(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: testGCDelay})
	img := pullLayout(t, s, dir, "a")
	s.Acquire(img.Digest)
	s.Release(img.Digest)
	time.Sleep(testGCDelay / 4)
	s.Acquire(img.Digest)
	time.Sleep(3 * testGCDelay)
	_, ok := s.Lookup(img.Digest)
	must.True(t, ok)
	must.True(t, exists(img.RootFS))

	// Pulling an unused image restarts its delay too.
	s.Release(img.Digest)
	time.Sleep(testGCDelay / 2)
	pullLayout(t, s, dir, "a")
	time.Sleep(testGCDelay * 3 / 4)
	must.True(t, exists(img.RootFS))
	eventually(t, 2*time.Second, gone(s, img), "image to be removed")
}

func TestGC_Disabled(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: false, GCDelay: time.Millisecond})
	img := pullLayout(t, s, dir, "a")
	s.Acquire(img.Digest)
	s.Release(img.Digest)
	s.Release(img.Digest) // unbalanced: logged, ignored
	time.Sleep(50 * time.Millisecond)
	_, ok := s.Lookup(img.Digest)
	must.True(t, ok)
}

func TestGC_CloseStopsTimers(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: testGCDelay})
	img := pullLayout(t, s, dir, "a")
	s.Acquire(img.Digest)
	s.Release(img.Digest)
	s.Close()
	time.Sleep(3 * testGCDelay)
	must.True(t, exists(img.RootFS))
}

func TestStore_RecoversFromInterruptedWrites(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	cache := t.TempDir()
	s, _ := newTestStore(t, StoreConfig{Dir: cache})
	img := pullLayout(t, s, dir, "a")
	s.Close()

	// Leftovers of a crash: a temporary rootfs, a temporary blob, and a
	// rootfs renamed into place whose metadata was never written.
	rootDir := filepath.Join(cache, "rootfs", "sha256")
	blobDir := filepath.Join(cache, "blobs", "sha256")
	must.NoError(t, os.MkdirAll(filepath.Join(rootDir, tmpPrefix+"abc-123", "bin"), 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(blobDir, tmpPrefix+"abc-1"), []byte("partial"), 0o600))
	incomplete := filepath.Join(rootDir, "b"+img.Digest.Hex[1:])
	must.NoError(t, os.MkdirAll(filepath.Join(incomplete, "etc"), 0o755))

	s2, _ := newTestStore(t, StoreConfig{Dir: cache})
	must.False(t, exists(filepath.Join(rootDir, tmpPrefix+"abc-123")))
	must.False(t, exists(filepath.Join(blobDir, tmpPrefix+"abc-1")))
	must.False(t, exists(incomplete))
	got, ok := s2.Lookup(img.Digest)
	must.True(t, ok)
	must.Eq(t, img.RootFS, got.RootFS)
}

func TestPull_CorruptLayoutBlobRefused(t *testing.T) {
	dir, a, _ := layoutWithTwoImages(t)
	m, err := a.Manifest()
	must.NoError(t, err)
	blob := filepath.Join(dir, "blobs", "sha256", m.Layers[0].Digest.Hex)
	b, err := os.ReadFile(blob)
	must.NoError(t, err)
	b[len(b)/2] ^= 0xff
	must.NoError(t, os.WriteFile(blob, b, 0o644))

	s, _ := newTestStore(t, StoreConfig{})
	_, err = s.Pull(context.Background(), mustParse(t, "oci:"+dir+":a"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrInvalid)
	must.StrContains(t, err.Error(), "has digest sha256:")
	must.False(t, exists(s.blobPath(m.Layers[0].Digest)))
	entries, err := os.ReadDir(s.rootDir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
}

func TestGC_ZeroDelayKeepsPulledImageUntilAcquired(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: 0})
	s.pullGrace = 5 * testGCDelay
	img := pullLayout(t, s, dir, "a")
	time.Sleep(testGCDelay)
	_, ok := s.Lookup(img.Digest)
	must.True(t, ok, must.Sprint("a pulled image survives the pull grace"))
	s.Acquire(img.Digest)
	s.Release(img.Digest)
	eventually(t, 2*time.Second, gone(s, img), "image to be removed right after release")
}

// TestGC_AfterRestart: images on disk when the store opens are collected
// once the tasks still running have had time to acquire theirs again.
func TestGC_AfterRestart(t *testing.T) {
	dir, _, _ := layoutWithTwoImages(t)
	cache := t.TempDir()
	first, _ := newTestStore(t, StoreConfig{Dir: cache, GCEnabled: true, GCDelay: time.Hour})
	imgA := pullLayout(t, first, dir, "a")
	imgB := pullLayout(t, first, dir, "b")
	first.Close()

	const grace = 300 * time.Millisecond
	s, _ := newTestStore(t, StoreConfig{Dir: cache, GCEnabled: true, GCDelay: testGCDelay, RecoverGrace: grace})
	// A recovered task takes up image b again; nobody takes up a.
	s.Acquire(imgB.Digest)
	time.Sleep(grace / 2)
	_, ok := s.Lookup(imgA.Digest)
	must.True(t, ok, must.Sprint("collected before the tasks could be recovered"))
	eventually(t, 3*time.Second, gone(s, imgA), "the image no task took up again to be removed")
	time.Sleep(2 * testGCDelay)
	_, ok = s.Lookup(imgB.Digest)
	must.True(t, ok, must.Sprint("the image a recovered task uses was removed"))
	must.True(t, exists(imgB.RootFS))
}

// TestGC_KeepsMountedRootfs: an image whose rootfs is still the lower
// directory of a mounted overlay (a task the driver has not taken up
// again) is never removed.
func TestGC_KeepsMountedRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting an overlay needs root")
	}
	dir, _, _ := layoutWithTwoImages(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: testGCDelay})
	img := pullLayout(t, s, dir, "a")

	task := t.TempDir()
	for _, d := range []string{"upper", "work", "rootfs"} {
		must.NoError(t, os.Mkdir(filepath.Join(task, d), 0o700))
	}
	target := filepath.Join(task, "rootfs")
	opts := "lowerdir=" + img.RootFS + ",upperdir=" + filepath.Join(task, "upper") + ",workdir=" + filepath.Join(task, "work")
	// As the driver mounts a task's rootfs (driver/plugin/rootfs.go).
	must.NoError(t, unix.Mount("overlay", target, "overlay", unix.MS_NODEV, opts))
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = unix.Unmount(target, unix.MNT_DETACH)
		}
	})

	s.Acquire(img.Digest)
	s.Release(img.Digest)
	time.Sleep(5 * testGCDelay)
	_, ok := s.Lookup(img.Digest)
	must.True(t, ok, must.Sprint("removed while mounted"))
	must.True(t, exists(filepath.Join(target, "bin", "busybox")))

	must.NoError(t, unix.Unmount(target, 0))
	mounted = false
	eventually(t, 3*time.Second, gone(s, img), "the image to be removed once unmounted")
}
