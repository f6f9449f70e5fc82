package image

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// tarLayer builds a layer from tar entries.
func tarLayer(t testing.TB, entries ...entry) v1.Layer {
	t.Helper()
	b, err := testutil.Tar(entries...)
	must.NoError(t, err)
	l, err := testutil.LayerFromBytes(b)
	must.NoError(t, err)
	return l
}

func diffID(t testing.TB, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.DiffID()
	must.NoError(t, err)
	return d
}

// layerNames lists the complete layers in the store's layer directory.
func layerNames(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.layerDir)
	must.NoError(t, err)
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func hexes(ds ...v1.Hash) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Hex)
	}
	sort.Strings(out)
	return out
}

// sharedLayers is two images on the busybox layer and a common second
// layer, each with a top layer of its own; the top layers white out files
// of the layers below (one plainly, one with an opaque directory).
type sharedLayers struct {
	dir                  string
	base, common, ta, tb v1.Layer
	a, b                 v1.Image
}

func newSharedLayers(t *testing.T) *sharedLayers {
	t.Helper()
	sl := &sharedLayers{dir: filepath.Join(t.TempDir(), "layout")}
	sl.base = mustLayers(t, testutil.BusyboxImage(t, linuxAMD64))[0]
	sl.common = tarLayer(t,
		entry{Name: "srv/", Type: tar.TypeDir},
		entry{Name: "srv/data/", Type: tar.TypeDir},
		entry{Name: "srv/data/one", Body: "1"},
		entry{Name: "srv/data/two", Body: "2"},
		entry{Name: "srv/tool", Body: "tool", Mode: 0o755},
		entry{Name: "srv/tool-alias", Type: tar.TypeLink, Linkname: "srv/tool"},
	)
	sl.ta = tarLayer(t,
		entry{Name: "srv/data/.wh.one"},
		entry{Name: "etc/.wh.hostname"},
		entry{Name: "a", Body: "a"},
	)
	sl.tb = tarLayer(t,
		entry{Name: "srv/data/", Type: tar.TypeDir, Mode: 0o750},
		entry{Name: "srv/data/.wh..wh..opq"},
		entry{Name: "srv/data/three", Body: "3"},
		// A hard link to a file of a lower layer.
		entry{Name: "srv/tool-b", Type: tar.TypeLink, Linkname: "/srv/tool"},
	)
	var err error
	sl.a, err = testutil.ImageFromLayers(linuxAMD64, v1.Config{Cmd: []string{"/a"}}, sl.base, sl.common, sl.ta)
	must.NoError(t, err)
	sl.b, err = testutil.ImageFromLayers(linuxAMD64, v1.Config{Cmd: []string{"/b"}}, sl.base, sl.common, sl.tb)
	must.NoError(t, err)
	testutil.WriteLayout(t, sl.dir, "a", sl.a)
	testutil.WriteLayout(t, sl.dir, "b", sl.b)
	return sl
}

// check asserts the rootfs of both images (a may be nil) and the layers
// they share.
func (sl *sharedLayers) check(t *testing.T, s *Store, imgA, imgB *Image) {
	t.Helper()
	if imgA != nil {
		// Image a: one whited out, hostname gone, the rest of busybox
		// there.
		checkBusyboxRootFS(t, imgA)
		must.False(t, exists(filepath.Join(imgA.RootFS, "srv/data/one")))
		must.Eq(t, "2", readFile(t, filepath.Join(imgA.RootFS, "srv/data/two")))
		must.False(t, exists(filepath.Join(imgA.RootFS, "etc/hostname")))
		must.Eq(t, "a", readFile(t, filepath.Join(imgA.RootFS, "a")))
		must.False(t, exists(filepath.Join(imgA.RootFS, "srv/data/.wh.one")))
		must.True(t, exists(filepath.Join(layerFS(s.layerPath(diffID(t, sl.ta))), "srv/data/.wh.one")))
	}

	// Image b: the opaque directory holds only its own entry.
	checkBusyboxRootFS(t, imgB)
	entries, err := os.ReadDir(filepath.Join(imgB.RootFS, "srv/data"))
	must.NoError(t, err)
	must.Len(t, 1, entries)
	must.Eq(t, "three", entries[0].Name())
	fi, err := os.Stat(filepath.Join(imgB.RootFS, "srv/data"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o750), fi.Mode().Perm())
	must.True(t, exists(filepath.Join(imgB.RootFS, "etc/hostname")))
	must.False(t, exists(filepath.Join(imgB.RootFS, "a")))

	// Hard links, within the common layer and from b's top layer to it.
	var tool, alias, toolB unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(imgB.RootFS, "srv/tool"), &tool))
	must.NoError(t, unix.Lstat(filepath.Join(imgB.RootFS, "srv/tool-alias"), &alias))
	must.NoError(t, unix.Lstat(filepath.Join(imgB.RootFS, "srv/tool-b"), &toolB))
	must.Eq(t, tool.Ino, alias.Ino)
	must.Eq(t, tool.Ino, toolB.Ino)
	must.Eq(t, uint32(0o755), tool.Mode&0o7777)

	// The shared layers are intact whatever the images on top of them
	// hid.
	common := layerFS(s.layerPath(diffID(t, sl.common)))
	must.Eq(t, "1", readFile(t, filepath.Join(common, "srv/data/one")))
	must.Eq(t, "2", readFile(t, filepath.Join(common, "srv/data/two")))
	must.True(t, exists(filepath.Join(layerFS(s.layerPath(diffID(t, sl.base))), "etc/hostname")))
	// Whiteouts stay in their layer as OCI markers.
	must.True(t, exists(filepath.Join(layerFS(s.layerPath(diffID(t, sl.tb))), "srv/data/.wh..wh..opq")))
}

func TestLayers_SharedLayersUnpackedOnce(t *testing.T) {
	sl := newSharedLayers(t)
	s, _ := newTestStore(t, StoreConfig{})
	var progress progressRecorder
	imgA := pullLayout(t, s, sl.dir, "a")
	must.Eq(t, int64(3), s.layerUnpacks.Load())
	imgB, err := s.Pull(context.Background(), mustParse(t, "oci:"+sl.dir+":b"), PullOptions{Platform: linuxAMD64, Progress: progress.record})
	must.NoError(t, err)

	// Only b's top layer is new.
	must.Eq(t, int64(4), s.layerUnpacks.Load())
	must.Eq(t, hexes(diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.ta), diffID(t, sl.tb)), layerNames(t, s))
	lines := progress.all()
	must.StrContains(t, lines[len(lines)-1], "(3 layers, ")
	must.StrContains(t, lines[len(lines)-1], ", 2 already unpacked) in ")
	sl.check(t, s, imgA, imgB)

	// The files of the shared layers are stored once: the rootfs entries
	// are the layer's inodes.
	var inA, inB, inLayer unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(imgA.RootFS, "bin/busybox"), &inA))
	must.NoError(t, unix.Lstat(filepath.Join(imgB.RootFS, "bin/busybox"), &inB))
	must.NoError(t, unix.Lstat(filepath.Join(layerFS(s.layerPath(diffID(t, sl.base))), "bin/busybox"), &inLayer))
	must.Eq(t, inLayer.Ino, inA.Ino)
	must.Eq(t, inLayer.Ino, inB.Ino)

	meta := s.images[imgB.Digest]
	must.Eq(t, []v1.Hash{diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.tb)}, meta.Layers)
}

func TestLayers_SharedBetweenPlatforms(t *testing.T) {
	data := tarLayer(t, entry{Name: "model.bin", Body: "weights"})
	amd, err := testutil.ImageFromLayers(linuxAMD64, v1.Config{}, mustLayers(t, testutil.BusyboxImage(t, linuxAMD64))[0], data)
	must.NoError(t, err)
	arm, err := testutil.ImageFromLayers(linuxARM64, v1.Config{}, tarLayer(t, entry{Name: "arm", Body: "arm"}), data)
	must.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "layout")
	testutil.WriteLayoutIndex(t, dir, "1", testutil.MultiPlatformIndex(t, map[string]v1.Image{"linux/amd64": amd, "linux/arm64": arm}))

	s, _ := newTestStore(t, StoreConfig{})
	ref := mustParse(t, "oci:"+dir+":1")
	a, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	b, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxARM64})
	must.NoError(t, err)
	must.NotEq(t, a.Digest, b.Digest)
	must.Eq(t, int64(3), s.layerUnpacks.Load())
	must.Eq(t, "weights", readFile(t, filepath.Join(a.RootFS, "model.bin")))
	must.Eq(t, "weights", readFile(t, filepath.Join(b.RootFS, "model.bin")))
	must.Len(t, 3, layerNames(t, s))
}

func TestLayers_ConcurrentPullsOfImagesSharingLayers(t *testing.T) {
	sl := newSharedLayers(t)
	for round := range 3 {
		s, _ := newTestStore(t, StoreConfig{})
		var (
			wg   sync.WaitGroup
			imgs [6]*Image
			errs [6]error
		)
		start := make(chan struct{})
		for i := range imgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				tag := "a"
				if i%2 == 1 {
					tag = "b"
				}
				imgs[i], errs[i] = s.Pull(context.Background(), mustParse(t, "oci:"+sl.dir+":"+tag), PullOptions{Platform: linuxAMD64})
			}()
		}
		close(start)
		wg.Wait()
		for i := range imgs {
			must.NoError(t, errs[i], must.Sprintf("round %d, pull %d", round, i))
		}
		// Each of the four layers once, and each blob downloaded once.
		must.Eq(t, int64(4), s.layerUnpacks.Load(), must.Sprintf("round %d", round))
		must.Eq(t, int64(4), s.blobFetches.Load(), must.Sprintf("round %d", round))
		must.Eq(t, imgs[0].RootFS, imgs[2].RootFS)
		sl.check(t, s, imgs[0], imgs[1])
	}
}

func TestLayers_GCRemovesUnusedLayersOnly(t *testing.T) {
	sl := newSharedLayers(t)
	s, _ := newTestStore(t, StoreConfig{GCEnabled: true, GCDelay: testGCDelay})
	imgA := pullLayout(t, s, sl.dir, "a")
	s.Acquire(imgA.Digest)
	imgB := pullLayout(t, s, sl.dir, "b")
	s.Acquire(imgB.Digest)

	s.Release(imgA.Digest)
	eventually(t, 2*time.Second, gone(s, imgA), "image a to be removed")
	eventually(t, 2*time.Second, func() bool { return !exists(s.layerPath(diffID(t, sl.ta))) }, "a's own layer to be removed")
	must.Eq(t, hexes(diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.tb)), layerNames(t, s))
	// Image b is whole (its files are the layers' inodes; the layers it
	// needs are all there to build it again).
	sl.check(t, s, nil, imgB)

	// Pulling a again unpacks only its own layer.
	before := s.layerUnpacks.Load()
	imgA = pullLayout(t, s, sl.dir, "a")
	s.Acquire(imgA.Digest)
	must.Eq(t, before+1, s.layerUnpacks.Load())

	s.Release(imgA.Digest)
	s.Release(imgB.Digest)
	eventually(t, 2*time.Second, gone(s, imgA), "image a to be removed")
	eventually(t, 2*time.Second, gone(s, imgB), "image b to be removed")
	eventually(t, 2*time.Second, func() bool { return len(layerNames(t, s)) == 0 }, "every layer to be removed")
}

func TestLayers_RecoveredAfterRestart(t *testing.T) {
	sl := newSharedLayers(t)
	cache := t.TempDir()
	s, _ := newTestStore(t, StoreConfig{Dir: cache})
	imgA := pullLayout(t, s, sl.dir, "a")
	s.Close()

	layerDir := filepath.Join(cache, "layers", "sha256")
	// Leftovers of a crash: a layer still being written, and a layer
	// directory without its metadata.
	must.NoError(t, os.MkdirAll(filepath.Join(layerDir, tmpPrefix+"abc-1", "fs", "bin"), 0o755))
	broken := filepath.Join(layerDir, diffID(t, sl.tb).Hex)
	must.NoError(t, os.MkdirAll(filepath.Join(broken, "fs"), 0o755))

	s2, _ := newTestStore(t, StoreConfig{Dir: cache})
	must.False(t, exists(filepath.Join(layerDir, tmpPrefix+"abc-1")))
	must.False(t, exists(broken))
	got, ok := s2.Lookup(imgA.Digest)
	must.True(t, ok)
	must.Eq(t, imgA.RootFS, got.RootFS)

	// b reuses the two layers it shares with a.
	imgB := pullLayout(t, s2, sl.dir, "b")
	must.Eq(t, int64(1), s2.layerUnpacks.Load())
	sl.check(t, s2, imgA, imgB)
}

func TestLayers_CorruptLayerNotCached(t *testing.T) {
	// A config whose diff_id does not match the layer: nothing is kept
	// under that diff ID.
	good := tarLayer(t, entry{Name: "f", Body: "x"})
	img, err := testutil.ImageFromLayers(linuxAMD64, v1.Config{}, good)
	must.NoError(t, err)
	cf, err := img.ConfigFile()
	must.NoError(t, err)
	cf = cf.DeepCopy()
	wrong := v1.Hash{Algorithm: "sha256", Hex: "1111111111111111111111111111111111111111111111111111111111111111"}
	cf.RootFS.DiffIDs = []v1.Hash{wrong}
	img, err = mutate.ConfigFile(img, cf)
	must.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "layout")
	testutil.WriteLayout(t, dir, "1", img)

	s, _ := newTestStore(t, StoreConfig{})
	_, err = s.Pull(context.Background(), mustParse(t, "oci:"+dir+":1"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrInvalid)
	must.StrContains(t, err.Error(), "but the config says "+wrong.String())
	must.SliceEmpty(t, layerNames(t, s))
	must.Eq(t, int64(0), s.layerUnpacks.Load())
}

func TestLayers_ConfigWithoutDiffIDs(t *testing.T) {
	// Layers of an image whose config lists no diff_ids are keyed by the
	// digest of their content, found while unpacking, and shared like
	// any other.
	sl := newSharedLayers(t)
	cf, err := sl.a.ConfigFile()
	must.NoError(t, err)
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = nil
	bare, err := mutate.ConfigFile(sl.a, cf)
	must.NoError(t, err)
	testutil.WriteLayout(t, sl.dir, "bare", bare)

	s, _ := newTestStore(t, StoreConfig{})
	img := pullLayout(t, s, sl.dir, "bare")
	must.Eq(t, int64(3), s.layerUnpacks.Load())
	must.Eq(t, hexes(diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.ta)), layerNames(t, s))
	must.Eq(t, []v1.Hash{diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.ta)}, s.images[img.Digest].Layers)
	must.False(t, exists(filepath.Join(img.RootFS, "srv/data/one")))

	imgB := pullLayout(t, s, sl.dir, "b")
	must.Eq(t, int64(4), s.layerUnpacks.Load())
	sl.check(t, s, img, imgB)
}

func TestLayers_UnreadableLayerFailsThePull(t *testing.T) {
	sl := newSharedLayers(t)
	s, _ := newTestStore(t, StoreConfig{})
	imgA := pullLayout(t, s, sl.dir, "a")
	common := s.layerPath(diffID(t, sl.common))
	meta := filepath.Join(common, layerMetaFile)

	// Metadata that cannot be read for another reason than being missing
	// (EISDIR here, as EIO, EACCES or EMFILE would): the layer may be
	// fine, and images use it. The pull fails and the layer stays.
	must.NoError(t, os.Rename(meta, meta+".saved"))
	must.NoError(t, os.Mkdir(meta, 0o700))
	_, err := s.Pull(context.Background(), mustParse(t, "oci:"+sl.dir+":b"), PullOptions{Platform: linuxAMD64})
	must.Error(t, err)
	must.StrContains(t, err.Error(), "read layer "+diffID(t, sl.common).String())
	must.Eq(t, "1", readFile(t, filepath.Join(layerFS(common), "srv/data/one")))

	// Metadata that does not decode marks a damaged layer: it is
	// replaced (b's own layer may have been unpacked by the failed pull
	// already).
	must.NoError(t, os.Remove(meta))
	must.NoError(t, os.WriteFile(meta, []byte("{"), 0o600))
	must.NoError(t, os.Remove(filepath.Join(layerFS(common), "srv/data/two")))
	imgB := pullLayout(t, s, sl.dir, "b")
	must.Eq(t, int64(5), s.layerUnpacks.Load())
	sl.check(t, s, imgA, imgB)
	must.Eq(t, hexes(diffID(t, sl.base), diffID(t, sl.common), diffID(t, sl.ta), diffID(t, sl.tb)), layerNames(t, s))
}

// dirtyPages returns how many pages of the file at path are not on disk
// yet (cachestat(2), Linux 6.5 and later).
func dirtyPages(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	must.NoError(t, err)
	defer f.Close()
	var rng struct{ off, len uint64 } // 0, 0: the whole file
	var cs struct{ cache, dirty, writeback, evicted, recentlyEvicted uint64 }
	_, _, errno := unix.Syscall6(unix.SYS_CACHESTAT, f.Fd(), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&cs)), 0, 0, 0)
	if errno == unix.ENOSYS || errno == unix.EPERM {
		t.Skipf("cachestat: %v", errno)
	}
	must.Zero(t, errno)
	return cs.dirty + cs.writeback
}

// requireWriteBack skips the test unless the file system of dir keeps new
// data in memory until it is synced, which tests of durability observe.
func requireWriteBack(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "probe")
	must.NoError(t, os.WriteFile(p, make([]byte, 1<<20), 0o600))
	defer os.Remove(p)
	if dirtyPages(t, p) == 0 {
		t.Skip("new data is on disk at once here")
	}
	must.NoError(t, syncFS(dir))
	if dirtyPages(t, p) != 0 {
		t.Skip("syncfs does not write data to disk here (tmpfs?)")
	}
}

func TestLayers_OnDiskBeforeTheyAppear(t *testing.T) {
	// A layer is trusted by its diff ID for ever: its files must be on
	// disk before it appears under its final name, or a power loss could
	// leave it there with truncated files.
	layer := tarLayer(t, entry{Name: "data.bin", Body: strings.Repeat("x", 1<<20)})
	d := diffID(t, layer)
	digest, err := layer.Digest()
	must.NoError(t, err)
	size, err := layer.Size()
	must.NoError(t, err)
	rc, err := layer.Compressed()
	must.NoError(t, err)
	defer rc.Close()

	s, _ := newTestStore(t, StoreConfig{})
	requireWriteBack(t, s.layerDir)
	ctx := context.Background()
	must.NoError(t, s.writeBlob(ctx, digest, size, rc, nil))
	job := &layerJob{desc: v1.Descriptor{Digest: digest, Size: size}, diffID: d}
	must.NoError(t, s.prepareLayer(ctx, mustParse(t, "registry.example/layer:1"), 0, 1, job,
		func() error { return nil }, func(unpin func()) { t.Cleanup(unpin) }))
	must.Eq(t, uint64(0), dirtyPages(t, filepath.Join(layerFS(s.layerPath(d)), "data.bin")))
}

func TestRenameDurably(t *testing.T) {
	// How a layer and an assembled rootfs are put in place.
	dir := t.TempDir()
	requireWriteBack(t, dir)
	tmp := filepath.Join(dir, tmpPrefix+"tree")
	must.NoError(t, os.MkdirAll(filepath.Join(tmp, "sub"), 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(tmp, "sub/f"), make([]byte, 1<<20), 0o644))
	must.NoError(t, renameDurably(tmp, filepath.Join(dir, "tree")))
	must.Eq(t, uint64(0), dirtyPages(t, filepath.Join(dir, "tree/sub/f")))
}
