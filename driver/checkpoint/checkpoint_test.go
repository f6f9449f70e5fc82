package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

func testMeta() Meta {
	return Meta{
		AllocID:     "0d8f6a3c-alloc",
		Task:        "counter",
		NodeID:      "node-1-id",
		NodeName:    "node-1",
		ImageRef:    "example.test/busybox:1",
		ImageDigest: "sha256:0123",
		Platform:    "linux/amd64",
	}
}

// checkLayout checks the files and modes of checkpoint dir against m.
func checkLayout(t *testing.T, dir string, m *Manifest) {
	t.Helper()
	var sum int64
	paths := make(map[string]bool)
	for _, f := range m.Files {
		paths[f.Path] = true
		sum += f.Size
		must.Eq(t, uint32(0o600), f.Mode, must.Sprintf("file %s", f.Path))
		must.Eq(t, 64, len(f.Sum))
	}
	must.Eq(t, sum, m.Bytes)
	must.MapContainsKey(t, paths, "images/inventory.img")
	must.MapContainsKey(t, paths, RootfsName)
	must.MapContainsKey(t, paths, SpecName)
	images := 0
	for p := range paths {
		if strings.HasPrefix(p, "images/") && strings.HasSuffix(p, ".img") {
			images++
		}
	}
	must.Greater(t, 3, images)
	must.DirNotExists(t, filepath.Join(dir, workName))

	// Every directory is 0700, every file 0600 and listed, but the manifest.
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		must.NoError(t, err)
		fi, err := os.Lstat(p)
		must.NoError(t, err)
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			must.Eq(t, os.FileMode(0o700), fi.Mode().Perm(), must.Sprintf("dir %s", rel))
			return nil
		}
		must.Eq(t, os.FileMode(0o600), fi.Mode().Perm(), must.Sprintf("file %s", rel))
		if rel != ManifestName {
			must.MapContainsKey(t, paths, filepath.ToSlash(rel))
		}
		return nil
	})
	must.NoError(t, err)
}

// checkRootfs checks that the merged rootfs at rootfs has counterScript's
// changes, and the upper dir under it the overlay's markers.
func checkRootfs(t *testing.T, taskDir string) {
	t.Helper()
	rootfs := filepath.Join(taskDir, "rootfs")
	data, err := os.ReadFile(filepath.Join(rootfs, "data.txt"))
	must.NoError(t, err)
	_, err = strconv.Atoi(strings.TrimSpace(string(data)))
	must.NoError(t, err, must.Sprintf("data.txt: %q", data))
	must.FileNotExists(t, filepath.Join(rootfs, "etc", "deleteme"))
	entries, err := os.ReadDir(filepath.Join(rootfs, "opaque"))
	must.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	must.Eq(t, []string{"hard", "new"}, names)
	link, err := os.Readlink(filepath.Join(rootfs, "data.link"))
	must.NoError(t, err)
	must.Eq(t, "/data.txt", link)

	upper := filepath.Join(taskDir, "upper")
	val, err := getXattr(filepath.Join(upper, "opaque"), "trusted.overlay.opaque")
	must.NoError(t, err)
	must.Eq(t, "y", val)
	var st unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(upper, "etc", "deleteme"), &st))
	must.Eq(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT)
	must.Eq(t, uint64(0), st.Rdev)
	var a, b unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(upper, "opaque", "new"), &a))
	must.NoError(t, unix.Lstat(filepath.Join(upper, "opaque", "hard"), &b))
	must.Eq(t, a.Ino, b.Ino)
}

// restore restores checkpoint dir as a new task in a new task dir over
// lower, the way the driver does on the destination.
func restore(t *testing.T, r *runc.Runc, lower, dir string, opts runc.RestoreOptions) *task {
	t.Helper()
	taskDir := filepath.Join(t.TempDir(), "task")
	start := time.Now()
	must.NoError(t, PrepareTaskDir(dir, taskDir))
	prepare := time.Since(start)
	mountOverlay(t, lower, taskDir)
	must.NoError(t, RebaseSpec(taskDir, opts))

	tk := newTask(t, r, taskDir)
	start = time.Now()
	tk.start(ImagesDir(dir), runc.RestoreArgs(opts))
	t.Logf("restored %s as %s: prepare %v, restore %v", dir, tk.id, prepare, time.Since(start))
	must.NoError(t, RemoveCriuConfig(taskDir))
	return tk
}

// checkpointOnce creates a checkpoint of a running task and checks what it
// holds; it returns the task, the checkpoint and its manifest.
func checkpointOnce(t *testing.T, r *runc.Runc, tk *task, dir string) *Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sink := &recordingSink{files: map[string][]byte{}}
	created, err := Create(ctx, r, tk.id, tk.dir, dir, testMeta(), Options{}, sink, testutil.Logger(t, hclog.Debug))
	must.NoError(t, err)
	m := created.Manifest
	must.NoError(t, created.SinkErr)
	raw, err := os.ReadFile(filepath.Join(dir, ManifestName))
	must.NoError(t, err)
	must.Eq(t, raw, created.Raw)
	must.Eq(t, Digest(raw), created.Digest)
	// The sink got every file, whole, once.
	must.MapLen(t, len(m.Files), sink.files)
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		must.NoError(t, err)
		must.Eq(t, data, sink.files[f.Path], must.Sprintf("file %s", f.Path))
	}
	t.Logf("checkpoint %s: %d files, %d bytes, dump %v, pack %v",
		tk.id, len(m.Files), m.Bytes, m.DumpDuration, m.PackDuration)

	// The dumped container is gone; the shim reports it killed.
	st := tk.wait()
	must.Eq(t, 9, st.Signal)
	tk.gone()

	must.Eq(t, Version, m.Version)
	must.Eq(t, tk.id, m.ContainerID)
	must.Eq(t, "node-1", m.NodeName)
	must.Eq(t, "linux/amd64", m.Platform)
	must.NotEq(t, "", m.RuncVersion)
	must.NotEq(t, "", m.CriuVersion)
	must.Positive(t, m.DumpDuration)
	must.Positive(t, m.PackDuration)
	must.False(t, m.CreatedAt.IsZero())
	checkLayout(t, dir, m)

	read, err := ReadManifest(dir)
	must.NoError(t, err)
	must.Eq(t, m.Files, read.Files)
	must.Eq(t, m.DumpDuration.Milliseconds(), read.DumpDuration.Milliseconds())
	must.Eq(t, m.CreatedAt.UnixNano(), read.CreatedAt.UnixNano())
	var fields map[string]any
	must.NoError(t, json.Unmarshal(raw, &fields))
	must.MapContainsKey(t, fields, "dump_duration_ms")
	must.MapContainsKey(t, fields, "pack_duration_ms")

	verified, err := verify(dir)
	must.NoError(t, err)
	must.Eq(t, m.Bytes, verified.Bytes)
	return m
}

// A task is checkpointed, restored as a new task in a new task directory,
// checkpointed again and restored again: each time the counter goes on
// from where it stopped and the rootfs changes are there.
func TestCheckpointRestoreRoundTrip(t *testing.T) {
	requireCriu(t)
	lower := newImage(t)
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	ckpts := t.TempDir()

	tk := newTask(t, r, newTaskDir(t, lower, "sh", "-c", counterScript))
	tk.start("", nil)
	tk.waitCounts(5)

	dir := filepath.Join(ckpts, "one")
	m := checkpointOnce(t, r, tk, dir)
	before := tk.counts()
	last := before[len(before)-1]

	// Dumped TCP connections would be closed; none here, but the CRIU
	// configuration file that carries the option must work.
	opts := m.RestoreOptions(false)
	opts.TCPClose = true
	second := restore(t, r, lower, dir, opts)
	got := second.waitCounts(3)
	t.Logf("last count before the checkpoint %d, first after the restore %d", last, got[0])
	must.Greater(t, last, got[0])
	must.Less(t, last+3, got[0], must.Sprintf("the counter restarted rather than resumed"))
	second.running()
	checkRootfs(t, second.dir)
	spec := readSpec(t, second.dir)
	must.Eq(t, filepath.Join(second.dir, "rootfs"), spec.Root.Path)
	must.Eq(t, filepath.Join(second.dir, CriuConfigName), spec.Annotations[runc.CriuConfigAnnotation])
	must.FileNotExists(t, filepath.Join(second.dir, CriuConfigName))

	// The restored task migrates again; the CRIU configuration it was
	// restored with is gone and does not disturb the dump.
	dir2 := filepath.Join(ckpts, "two")
	checkpointOnce(t, r, second, dir2)
	before = second.counts()
	last = before[len(before)-1]
	third := restore(t, r, lower, dir2, runc.RestoreOptions{})
	got = third.waitCounts(3)
	t.Logf("last count before the second checkpoint %d, first after the restore %d", last, got[0])
	must.Greater(t, last, got[0])
	must.Less(t, last+3, got[0])
	checkRootfs(t, third.dir)
	spec = readSpec(t, third.dir)
	must.Eq(t, filepath.Join(third.dir, CriuConfigName), spec.Annotations[runc.CriuConfigAnnotation])
	must.FileNotExists(t, filepath.Join(third.dir, CriuConfigName))

	// A flipped byte in a CRIU image is caught.
	pages := firstPagesImage(t, dir)
	flipByte(t, filepath.Join(dir, pages))
	_, err := verify(dir)
	must.ErrorContains(t, err, "checkpoint file "+pages+": blake3 mismatch (corrupt or tampered); refusing to restore")
	must.True(t, errors.Is(err, ErrCorrupt))
	flipByte(t, filepath.Join(dir, pages))
	_, err = verify(dir)
	must.NoError(t, err)

	// So is a truncated one, and one too many.
	must.NoError(t, os.Truncate(filepath.Join(dir, pages), 10))
	_, err = verify(dir)
	must.ErrorContains(t, err, "checkpoint file "+pages+": size 10, manifest says")
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "pages-99.img"), nil, 0o600))
	_, err = verify(dir)
	must.ErrorContains(t, err, "checkpoint file images/pages-99.img: not listed in the manifest")

	must.NoError(t, Remove(dir))
	must.DirNotExists(t, dir)
	must.NoError(t, Remove(dir))
}

func readSpec(t *testing.T, taskDir string) *specs.Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(taskDir, SpecName))
	must.NoError(t, err)
	var s specs.Spec
	must.NoError(t, json.Unmarshal(data, &s))
	return &s
}

// firstPagesImage returns the path of the largest pages image of dir.
func firstPagesImage(t *testing.T, dir string) string {
	t.Helper()
	m, err := ReadManifest(dir)
	must.NoError(t, err)
	best := File{}
	for _, f := range m.Files {
		if strings.HasPrefix(f.Path, "images/pages-") && f.Size > best.Size {
			best = f
		}
	}
	must.NotEq(t, "", best.Path)
	return best.Path
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 100)
	must.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, 100)
	must.NoError(t, err)
}

// A container holding an established TCP connection cannot be dumped
// without Options.TCPEstablished: Create fails, says why, leaves no
// checkpoint behind, and the container keeps running under its shim.
func TestCreateDumpFails(t *testing.T) {
	requireCriu(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	lower := newImage(t)
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	script := `echo connected; while true; do sleep 1; done | nc 127.0.0.1 ` + port
	tk := newTask(t, r, newTaskDir(t, lower, "sh", "-c", script))
	tk.start("", nil)
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the container did not connect")
	}

	dir := filepath.Join(t.TempDir(), "ckpt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = Create(ctx, r, tk.id, tk.dir, dir, testMeta(), Options{}, nil, testutil.Logger(t, hclog.Debug))
	must.Error(t, err)
	t.Logf("create error: %v", err)
	must.StrContains(t, err.Error(), "checkpoint "+tk.id+": dump: ")
	must.StrContains(t, err.Error(), "consider using --tcp-established")
	must.False(t, errors.Is(err, ErrDumped))
	must.DirNotExists(t, dir)

	tk.running()
	must.True(t, tk.proc.Alive())

	// An unknown container: nothing to dump, nothing left behind.
	_, err = Create(ctx, r, "ferry-ckpt-missing", tk.dir, dir, testMeta(), Options{}, nil, testutil.Logger(t, hclog.Debug))
	must.True(t, errors.Is(err, runc.ErrNotExist), must.Sprintf("error: %v", err))
	must.DirNotExists(t, dir)

	// An existing directory is never written into.
	must.NoError(t, os.Mkdir(dir, 0o700))
	_, err = Create(ctx, r, tk.id, tk.dir, dir, testMeta(), Options{}, nil, testutil.Logger(t, hclog.Debug))
	must.ErrorIs(t, err, fs.ErrExist)
	tk.running()
}

// When packing fails after the dump the container is gone, but its images
// are kept: the task restores in place from them.
func TestCreatePackFailsKeepsImages(t *testing.T) {
	requireCriu(t)
	lower := newImage(t)
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	tk := newTask(t, r, newTaskDir(t, lower, "sh", "-c", counterScript))
	tk.start("", nil)
	tk.waitCounts(3)

	// The wrong task directory: nothing to pack there.
	dir := filepath.Join(t.TempDir(), "ckpt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Create(ctx, r, tk.id, t.TempDir(), dir, testMeta(), Options{}, nil, testutil.Logger(t, hclog.Debug))
	must.ErrorIs(t, err, ErrDumped)
	t.Logf("create error: %v", err)
	must.StrContains(t, err.Error(), "pack rootfs")
	must.Eq(t, 9, tk.wait().Signal)
	must.FileExists(t, filepath.Join(ImagesDir(dir), "inventory.img"))
	_, err = ReadManifest(dir)
	must.ErrorIs(t, err, ErrNoManifest)
	before := tk.counts()

	again := newTask(t, r, tk.dir)
	again.start(ImagesDir(dir), nil)
	got := again.waitCounts(2)
	must.Greater(t, before[len(before)-1], got[0])
	again.running()
	must.NoError(t, Remove(dir))
}
