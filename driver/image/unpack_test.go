package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

type entry = testutil.TarEntry

// unpackLayers unpacks each tar layer into a directory of its own and
// assembles them, in order, into a fresh rootfs, whose path it returns.
func unpackLayers(t *testing.T, layers ...[]entry) (string, error) {
	t.Helper()
	tars := make([][]byte, len(layers))
	for i, l := range layers {
		b, err := testutil.Tar(l...)
		must.NoError(t, err)
		tars[i] = b
	}
	return unpackTars(t, nil, tars...)
}

// unpackTars is unpackLayers for tar archives; configure, if set, adjusts
// the assembler.
func unpackTars(t *testing.T, configure func(*assembler), tars ...[]byte) (string, error) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	must.NoError(t, os.Mkdir(root, 0o755))
	a := newAssembler(root, hclog.NewNullLogger())
	if configure != nil {
		configure(a)
	}
	for i, b := range tars {
		layer := filepath.Join(dir, fmt.Sprintf("layer%d", i+1))
		must.NoError(t, os.Mkdir(layer, 0o755))
		u := newUnpacker(layer, hclog.NewNullLogger())
		if err := u.apply(context.Background(), i+1, bytes.NewReader(b)); err != nil {
			return root, err
		}
		if err := a.apply(context.Background(), i+1, layer, u.meta(v1.Hash{})); err != nil {
			return root, err
		}
	}
	return root, nil
}

func mustUnpack(t *testing.T, layers ...[]entry) string {
	t.Helper()
	root, err := unpackLayers(t, layers...)
	must.NoError(t, err)
	return root
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	must.NoError(t, err)
	return string(b)
}

func TestUnpack_Whiteout(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "a/", Type: tar.TypeDir},
			{Name: "a/f1", Body: "1"},
			{Name: "a/f2", Body: "2"},
			{Name: "b", Body: "b"},
			{Name: "c/", Type: tar.TypeDir},
			{Name: "c/deep", Body: "d"},
		},
		[]entry{
			{Name: "a/.wh.f1"},
			{Name: ".wh.b"},
			{Name: ".wh.c"},
			{Name: ".wh.never-existed"},
			{Name: "missing/.wh.x"},
			// Recreated in the same layer as its whiteout: the whiteout
			// only hides lower layers.
			{Name: "c/", Type: tar.TypeDir},
			{Name: "c/new", Body: "n"},
		},
	)
	must.False(t, exists(filepath.Join(root, "a/f1")))
	must.Eq(t, "2", readFile(t, filepath.Join(root, "a/f2")))
	must.False(t, exists(filepath.Join(root, "b")))
	must.False(t, exists(filepath.Join(root, "c/deep")))
	must.Eq(t, "n", readFile(t, filepath.Join(root, "c/new")))
	must.False(t, exists(filepath.Join(root, ".wh.b")))
	must.False(t, exists(filepath.Join(root, "missing")))
}

func TestUnpack_OpaqueDir(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "d/", Type: tar.TypeDir},
			{Name: "d/old", Body: "old"},
			{Name: "d/sub/", Type: tar.TypeDir},
			{Name: "d/sub/x", Body: "x"},
			{Name: "keep", Body: "k"},
		},
		[]entry{
			// An entry before the marker belongs to this layer and stays.
			{Name: "d/", Type: tar.TypeDir},
			{Name: "d/early", Body: "e"},
			{Name: "d/.wh..wh..opq"},
			{Name: "d/new", Body: "new"},
		},
	)
	entries, err := os.ReadDir(filepath.Join(root, "d"))
	must.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	must.Eq(t, []string{"early", "new"}, names)
	must.Eq(t, "k", readFile(t, filepath.Join(root, "keep")))
}

func TestUnpack_OpaqueHidesLowerContentOfRedeclaredSubdir(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "d/", Type: tar.TypeDir},
			{Name: "d/sub/", Type: tar.TypeDir},
			{Name: "d/sub/lower", Body: "l"},
		},
		[]entry{
			{Name: "d/sub/", Type: tar.TypeDir},
			{Name: "d/sub/upper", Body: "u"},
			{Name: "d/.wh..wh..opq"},
		},
	)
	must.False(t, exists(filepath.Join(root, "d/sub/lower")))
	must.Eq(t, "u", readFile(t, filepath.Join(root, "d/sub/upper")))
}

func TestUnpack_HardLink(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "bin/", Type: tar.TypeDir},
			{Name: "bin/tool", Body: "tool", Mode: 0o755},
			{Name: "bin/alias", Type: tar.TypeLink, Linkname: "bin/tool"},
			{Name: "link-to-symlink-target", Type: tar.TypeSymlink, Linkname: "/nowhere"},
		},
		[]entry{
			// Hard link to a file of a lower layer, and to a symlink.
			{Name: "usr/", Type: tar.TypeDir},
			{Name: "usr/tool", Type: tar.TypeLink, Linkname: "/bin/tool"},
			{Name: "sym-hardlink", Type: tar.TypeLink, Linkname: "link-to-symlink-target"},
		},
	)
	var a, b, c unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(root, "bin/tool"), &a))
	must.NoError(t, unix.Lstat(filepath.Join(root, "bin/alias"), &b))
	must.NoError(t, unix.Lstat(filepath.Join(root, "usr/tool"), &c))
	must.Eq(t, a.Ino, b.Ino)
	must.Eq(t, a.Ino, c.Ino)
	// Three names in the rootfs, two in the first layer's directory.
	must.Eq(t, uint64(5), uint64(a.Nlink))
	target, err := os.Readlink(filepath.Join(root, "sym-hardlink"))
	must.NoError(t, err)
	must.Eq(t, "/nowhere", target)
}

func TestUnpack_Symlinks(t *testing.T) {
	outside := t.TempDir()
	root := mustUnpack(t,
		[]entry{
			{Name: "usr/", Type: tar.TypeDir},
			{Name: "usr/lib/", Type: tar.TypeDir},
			{Name: "lib", Type: tar.TypeSymlink, Linkname: "usr/lib"},
			{Name: "etc/", Type: tar.TypeDir},
			{Name: "etc/localtime", Type: tar.TypeSymlink, Linkname: "/usr/share/zoneinfo/UTC"},
			{Name: "escape", Type: tar.TypeSymlink, Linkname: filepath.Join(outside, "target")},
		},
		[]entry{
			// Writing through a relative symlink that stays inside.
			{Name: "lib/libx.so", Body: "x"},
			// A file replacing a symlink must not write through it.
			{Name: "escape", Body: "inside"},
		},
	)
	target, err := os.Readlink(filepath.Join(root, "etc/localtime"))
	must.NoError(t, err)
	must.Eq(t, "/usr/share/zoneinfo/UTC", target)
	must.Eq(t, "x", readFile(t, filepath.Join(root, "usr/lib/libx.so")))
	fi, err := os.Lstat(filepath.Join(root, "escape"))
	must.NoError(t, err)
	must.True(t, fi.Mode().IsRegular())
	must.False(t, exists(filepath.Join(outside, "target")))
}

func TestUnpack_Replace(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "x/", Type: tar.TypeDir},
			{Name: "x/child", Body: "c"},
			{Name: "y", Body: "file"},
			{Name: "z", Type: tar.TypeSymlink, Linkname: "x"},
		},
		[]entry{
			{Name: "x", Body: "now a file"},
			{Name: "y/", Type: tar.TypeDir},
			{Name: "z/", Type: tar.TypeDir},
			{Name: "z/inner", Body: "i"},
		},
	)
	must.Eq(t, "now a file", readFile(t, filepath.Join(root, "x")))
	fi, err := os.Lstat(filepath.Join(root, "y"))
	must.NoError(t, err)
	must.True(t, fi.IsDir())
	fi, err = os.Lstat(filepath.Join(root, "z"))
	must.NoError(t, err)
	must.True(t, fi.IsDir())
	must.Eq(t, "i", readFile(t, filepath.Join(root, "z/inner")))
}

func TestUnpack_Metadata(t *testing.T) {
	root := mustUnpack(t, []entry{
		{Name: "./", Type: tar.TypeDir, Mode: 0o755},
		{Name: "ro/", Type: tar.TypeDir, Mode: 0o555},
		{Name: "ro/file", Body: "f", Mode: 0o640, UID: 1000, GID: 2000},
		{Name: "suid", Body: "s", Mode: 0o4755, UID: 0, GID: 0},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "fifo", Type: tar.TypeFifo, Mode: 0o600},
		{Name: "null", Type: tar.TypeChar, Mode: 0o666},
	})
	fi, err := os.Stat(filepath.Join(root, "ro"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o555), fi.Mode().Perm())
	must.Eq(t, 2024, fi.ModTime().Year())

	fi, err = os.Stat(filepath.Join(root, "ro/file"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o640), fi.Mode().Perm())
	must.Eq(t, 2024, fi.ModTime().Year())
	if os.Geteuid() == 0 {
		st := fi.Sys().(*syscall.Stat_t)
		must.Eq(t, uint32(1000), st.Uid)
		must.Eq(t, uint32(2000), st.Gid)
	}

	fi, err = os.Stat(filepath.Join(root, "suid"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeSetuid != 0)

	fi, err = os.Stat(filepath.Join(root, "tmp"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeSticky != 0)
	must.Eq(t, os.FileMode(0o777), fi.Mode().Perm())

	fi, err = os.Lstat(filepath.Join(root, "fifo"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeNamedPipe != 0)
	// Device nodes are never created (a character device 0:0 is a
	// whiteout, see TestUnpack_Filter).
	must.False(t, exists(filepath.Join(root, "null")))
}

func TestUnpack_Xattrs(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must.NoError(t, tw.WriteHeader(&tar.Header{
		Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.ferry": "dir"},
	}))
	must.NoError(t, tw.WriteHeader(&tar.Header{
		Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.ferry": "yes"},
	}))
	_, err := tw.Write([]byte("x"))
	must.NoError(t, err)
	must.NoError(t, tw.Close())

	layer := filepath.Join(t.TempDir(), "layer")
	must.NoError(t, os.Mkdir(layer, 0o755))
	u := newUnpacker(layer, hclog.NewNullLogger())
	must.NoError(t, u.apply(context.Background(), 1, bytes.NewReader(buf.Bytes())))
	val := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(layer, "d/f"), "user.ferry", val)
	if err != nil {
		// Some file systems do not store user xattrs; the unpack must not
		// fail because of it.
		must.Eq(t, 2, u.skippedXattrs)
		t.Skipf("file system without user xattrs: %v", err)
	}
	must.Eq(t, "yes", string(val[:n]))

	// The rootfs has them too: the file is the layer's, the directory
	// a copy.
	root, err := unpackTars(t, nil, buf.Bytes())
	must.NoError(t, err)
	n, err = unix.Lgetxattr(filepath.Join(root, "d/f"), "user.ferry", val)
	must.NoError(t, err)
	must.Eq(t, "yes", string(val[:n]))
	n, err = unix.Lgetxattr(filepath.Join(root, "d"), "user.ferry", val)
	must.NoError(t, err)
	must.Eq(t, "dir", string(val[:n]))
}

func TestUnpack_RefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := []struct {
		name   string
		layers [][]entry
	}{
		{"dotdot entry", [][]entry{{{Name: "../escape", Body: "x"}}}},
		{"nested dotdot entry", [][]entry{{{Name: "a/../../escape", Body: "x"}}}},
		{"dotdot whiteout", [][]entry{{{Name: "../.wh.escape"}}}},
		{"hard link to outside", [][]entry{{
			{Name: "hl", Type: tar.TypeLink, Linkname: "../../../../../../../../etc/passwd"},
		}}},
		// The symlink leads to the rootfs's own path of that name, where
		// there is nothing to link to.
		{"hard link through absolute symlink", [][]entry{{
			{Name: "evil", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "hl", Type: tar.TypeLink, Linkname: "evil/keep"},
		}}},
		{"hard link through a lower layer's absolute symlink", [][]entry{
			{{Name: "evil", Type: tar.TypeSymlink, Linkname: outside}},
			{{Name: "hl", Type: tar.TypeLink, Linkname: "evil/keep"}},
		}},
	}
	must.NoError(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := unpackLayers(t, tc.layers...)
			must.Error(t, err)
			must.True(t, errors.Is(err, ErrInvalid), must.Sprintf("want ErrInvalid, got %v", err))
			must.StrContains(t, err.Error(), "rootfs")
			must.False(t, exists(filepath.Join(outside, "pwned")))
			must.Eq(t, "keep", readFile(t, filepath.Join(outside, "keep")))
		})
	}
}

func TestUnpack_SymlinkParentsStayInsideTheRootfs(t *testing.T) {
	// Symlinks among the parents resolve as inside the container: an
	// absolute target from the rootfs, ".." no higher than the rootfs. A
	// symlink to a host path leads to the rootfs's path of that name.
	outside := t.TempDir()
	climb := "../../../../../../../.." + outside
	cases := []struct {
		name   string
		layers [][]entry
	}{
		{"absolute symlink parent", [][]entry{{
			{Name: "evil", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "evil/pwned", Body: "x"},
		}}},
		{"absolute symlink parent in a later layer", [][]entry{
			{{Name: "evil", Type: tar.TypeSymlink, Linkname: outside}},
			{{Name: "evil/pwned", Body: "x"}},
		}},
		{"relative symlink parent climbing out", [][]entry{{
			{Name: "a/", Type: tar.TypeDir},
			{Name: "a/up", Type: tar.TypeSymlink, Linkname: climb},
			{Name: "a/up/pwned", Body: "x"},
		}}},
		{"relative symlink of a lower layer climbing out", [][]entry{
			{{Name: "a/", Type: tar.TypeDir}, {Name: "a/up", Type: tar.TypeSymlink, Linkname: climb}},
			{{Name: "a/up/pwned", Body: "x"}},
		}},
		{"hard link into a lower layer's absolute symlink", [][]entry{
			{{Name: "f", Body: "x"}, {Name: "evil", Type: tar.TypeSymlink, Linkname: outside}},
			{{Name: "evil/pwned", Type: tar.TypeLink, Linkname: "f"}},
		}},
		{"whiteouts through absolute symlinks", [][]entry{
			{{Name: "evil", Type: tar.TypeSymlink, Linkname: outside}},
			{{Name: "evil/.wh.keep"}, {Name: "evil/.wh..wh..opq"}},
			{{Name: "own", Type: tar.TypeSymlink, Linkname: outside}, {Name: "own/.wh.keep"}, {Name: "own/pwned", Body: "x"}},
		}},
	}
	must.NoError(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root, err := unpackLayers(t, tc.layers...)
			must.NoError(t, err)
			must.Eq(t, "x", readFile(t, filepath.Join(root, outside, "pwned")))
			must.False(t, exists(filepath.Join(outside, "pwned")))
			must.Eq(t, "keep", readFile(t, filepath.Join(outside, "keep")))
		})
	}
}

func TestUnpack_AbsoluteSymlinkParentOfALowerLayer(t *testing.T) {
	// As in many base images: /var/run is a symlink to /run, and a later
	// layer installs a file under /var/run.
	root := mustUnpack(t,
		[]entry{
			{Name: "run/", Type: tar.TypeDir},
			{Name: "var/", Type: tar.TypeDir},
			{Name: "var/run", Type: tar.TypeSymlink, Linkname: "/run"},
			{Name: "var/lock", Type: tar.TypeSymlink, Linkname: "/../run/lock"},
		},
		[]entry{
			{Name: "var/run/x", Body: "x"},
			{Name: "var/lock/l", Body: "l"},
			{Name: "var/run/hl", Type: tar.TypeLink, Linkname: "var/lock/l"},
		},
		[]entry{
			{Name: "var/run/.wh.x"},
			{Name: "y", Type: tar.TypeLink, Linkname: "var/run/hl"},
		},
	)
	must.False(t, exists(filepath.Join(root, "run/x")))
	must.Eq(t, "l", readFile(t, filepath.Join(root, "run/lock/l")))
	must.Eq(t, "l", readFile(t, filepath.Join(root, "run/hl")))
	must.Eq(t, "l", readFile(t, filepath.Join(root, "y")))
	target, err := os.Readlink(filepath.Join(root, "var/run"))
	must.NoError(t, err)
	must.Eq(t, "/run", target)
}

func TestUnpack_HardLinkToMissingTarget(t *testing.T) {
	_, err := unpackLayers(t, []entry{{Name: "hl", Type: tar.TypeLink, Linkname: "nope"}})
	must.Error(t, err)
	must.StrContains(t, err.Error(), `hard link target "nope" does not exist`)
	must.StrContains(t, err.Error(), `layer 1: entry "hl"`)
}

func TestUnpack_LayerKeepsWhatItCannotApply(t *testing.T) {
	b, err := testutil.Tar(
		entry{Name: "a/.wh.x"},
		entry{Name: "b/.wh..wh..opq"},
		entry{Name: ".wh..wh.plnk"}, // aufs bookkeeping: ignored
		entry{Name: "c/d/file", Body: "f"},
		entry{Name: "e/", Type: tar.TypeDir},
		entry{Name: "e/f", Body: "e"},
		entry{Name: "in-layer", Type: tar.TypeLink, Linkname: "e/f"},
		entry{Name: "to-lower", Type: tar.TypeLink, Linkname: "/usr/bin/tool"},
		entry{Name: "replaced", Type: tar.TypeLink, Linkname: "/usr/bin/other"},
		entry{Name: "replaced", Body: "now a file"},
	)
	must.NoError(t, err)
	layer := filepath.Join(t.TempDir(), "layer")
	must.NoError(t, os.Mkdir(layer, 0o755))
	u := newUnpacker(layer, hclog.NewNullLogger())
	must.NoError(t, u.apply(context.Background(), 1, bytes.NewReader(b)))

	m := u.meta(v1.Hash{})
	// The layer has no entry for its root, a, b, c and c/d.
	must.Eq(t, []string{"", "a", "b", "c", "c/d"}, m.Implicit)
	must.Eq(t, []layerLink{{Path: "to-lower", Target: "usr/bin/tool"}}, m.Links)
	must.True(t, exists(filepath.Join(layer, "a/.wh.x")))
	must.True(t, exists(filepath.Join(layer, "b/.wh..wh..opq")))
	must.False(t, exists(filepath.Join(layer, ".wh..wh.plnk")))
	must.False(t, exists(filepath.Join(layer, "to-lower")))
	var in, f unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(layer, "in-layer"), &in))
	must.NoError(t, unix.Lstat(filepath.Join(layer, "e/f"), &f))
	must.Eq(t, f.Ino, in.Ino)
	must.Eq(t, "now a file", readFile(t, filepath.Join(layer, "replaced")))
}

func TestUnpack_WhiteoutsUnderADirectoryThatReplacesASymlink(t *testing.T) {
	// The upper layer replaces the symlink d with a directory of its own:
	// its whiteouts there hide nothing behind the old symlink.
	root := mustUnpack(t,
		[]entry{
			{Name: "target/", Type: tar.TypeDir},
			{Name: "target/keep", Body: "k"},
			{Name: "d", Type: tar.TypeSymlink, Linkname: "target"},
		},
		[]entry{
			{Name: "d/", Type: tar.TypeDir},
			{Name: "d/.wh.keep"},
			{Name: "d/.wh..wh..opq"},
			{Name: "d/new", Body: "n"},
		},
	)
	fi, err := os.Lstat(filepath.Join(root, "d"))
	must.NoError(t, err)
	must.True(t, fi.IsDir())
	must.Eq(t, "n", readFile(t, filepath.Join(root, "d/new")))
	must.Eq(t, "k", readFile(t, filepath.Join(root, "target/keep")))
}

func TestUnpack_WhiteoutThroughALowerSymlink(t *testing.T) {
	// Whiteouts under a path that is a symlink below apply where it
	// points, as entries written there do.
	root := mustUnpack(t,
		[]entry{
			{Name: "usr/", Type: tar.TypeDir},
			{Name: "usr/lib/", Type: tar.TypeDir},
			{Name: "usr/lib/old.so", Body: "o"},
			{Name: "usr/lib/keep.so", Body: "k"},
			{Name: "lib", Type: tar.TypeSymlink, Linkname: "usr/lib"},
		},
		[]entry{
			{Name: "lib/.wh.old.so"},
			{Name: "lib/new.so", Body: "n"},
		},
	)
	must.False(t, exists(filepath.Join(root, "usr/lib/old.so")))
	must.Eq(t, "k", readFile(t, filepath.Join(root, "usr/lib/keep.so")))
	must.Eq(t, "n", readFile(t, filepath.Join(root, "usr/lib/new.so")))
	target, err := os.Readlink(filepath.Join(root, "lib"))
	must.NoError(t, err)
	must.Eq(t, "usr/lib", target)
}

func TestUnpack_HardLinkToLowerThroughSymlinkOfItsLayer(t *testing.T) {
	root := mustUnpack(t,
		[]entry{
			{Name: "bin/", Type: tar.TypeDir},
			{Name: "bin/tool", Body: "t", Mode: 0o755},
		},
		[]entry{
			{Name: "l", Type: tar.TypeSymlink, Linkname: "bin"},
			{Name: "hl", Type: tar.TypeLink, Linkname: "l/tool"},
			// Whited out in the same layer after being linked: the link
			// keeps the file.
			{Name: "bin/.wh.gone"},
		},
	)
	var tool, hl unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(root, "bin/tool"), &tool))
	must.NoError(t, unix.Lstat(filepath.Join(root, "hl"), &hl))
	must.Eq(t, tool.Ino, hl.Ino)
}

func TestUnpack_CopiesWhenLinksRefused(t *testing.T) {
	// A file system that refuses links from the layers to the rootfs (at
	// its link limit, say) gets copies with the same content and
	// metadata, hard links kept.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 4, Uid: 1000, Gid: 2000, ModTime: mtime, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.ferry": "yes"}},
		{Name: "bin/alias", Typeflag: tar.TypeLink, Linkname: "bin/tool"},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "tool", ModTime: mtime},
		{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o640, ModTime: mtime},
	} {
		must.NoError(t, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := tw.Write([]byte("tool"))
			must.NoError(t, err)
		}
	}
	must.NoError(t, tw.Close())
	upper, err := testutil.Tar(entry{Name: "usr/tool", Type: tar.TypeLink, Linkname: "bin/tool"})
	must.NoError(t, err)

	var root string
	root, err = unpackTars(t, func(a *assembler) {
		a.link = func(oldname, newname string) error {
			if !strings.HasPrefix(oldname, a.root+string(filepath.Separator)) {
				return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: unix.EMLINK}
			}
			return os.Link(oldname, newname)
		}
	}, buf.Bytes(), upper)
	must.NoError(t, err)
	layer := filepath.Join(filepath.Dir(root), "layer1")

	var inRoot, inLayer, alias, usrTool unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(root, "bin/tool"), &inRoot))
	must.NoError(t, unix.Lstat(filepath.Join(layer, "bin/tool"), &inLayer))
	must.NoError(t, unix.Lstat(filepath.Join(root, "bin/alias"), &alias))
	must.NoError(t, unix.Lstat(filepath.Join(root, "usr/tool"), &usrTool))
	must.NotEq(t, inLayer.Ino, inRoot.Ino)
	must.Eq(t, inRoot.Ino, alias.Ino)
	must.Eq(t, inRoot.Ino, usrTool.Ino)
	must.Eq(t, "tool", readFile(t, filepath.Join(root, "bin/tool")))
	must.Eq(t, uint32(0o4755), inRoot.Mode&0o7777)
	must.Eq(t, mtime.Unix(), inRoot.Mtim.Sec)
	if os.Geteuid() == 0 {
		must.Eq(t, uint32(1000), inRoot.Uid)
		must.Eq(t, uint32(2000), inRoot.Gid)
	}
	val := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(layer, "bin/tool"), "user.ferry", val); err == nil {
		must.Eq(t, "yes", string(val[:n]))
		n, err = unix.Lgetxattr(filepath.Join(root, "bin/tool"), "user.ferry", val)
		must.NoError(t, err)
		must.Eq(t, "yes", string(val[:n]))
	}
	target, err := os.Readlink(filepath.Join(root, "bin/sh"))
	must.NoError(t, err)
	must.Eq(t, "tool", target)
	fi, err := os.Lstat(filepath.Join(root, "fifo"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeNamedPipe != 0)
	must.Eq(t, os.FileMode(0o640), fi.Mode().Perm())
}

func TestUnpack_HardLinkToALowerFileThenWhiteout(t *testing.T) {
	// In entry order: b is linked to the lower a, then a is whited out.
	root := mustUnpack(t,
		[]entry{{Name: "d/", Type: tar.TypeDir}, {Name: "d/a", Body: "lower"}},
		[]entry{
			{Name: "b", Type: tar.TypeLink, Linkname: "d/a"},
			{Name: "d/.wh.a"},
		},
	)
	must.Eq(t, "lower", readFile(t, filepath.Join(root, "b")))
	must.False(t, exists(filepath.Join(root, "d/a")))
}

func TestUnpack_HardLinkToALowerFileThenReplaced(t *testing.T) {
	// b is linked to the lower a before the layer replaces a: b keeps the
	// lower content, under an opaque directory too.
	root := mustUnpack(t,
		[]entry{{Name: "a", Body: "lower"}, {Name: "d/", Type: tar.TypeDir}, {Name: "d/f", Body: "lower f"}},
		[]entry{
			{Name: "b", Type: tar.TypeLink, Linkname: "a"},
			{Name: "a", Body: "new"},
			{Name: "g", Type: tar.TypeLink, Linkname: "d/f"},
			{Name: "d/", Type: tar.TypeDir},
			{Name: "d/.wh..wh..opq"},
		},
	)
	must.Eq(t, "lower", readFile(t, filepath.Join(root, "b")))
	must.Eq(t, "new", readFile(t, filepath.Join(root, "a")))
	must.Eq(t, "lower f", readFile(t, filepath.Join(root, "g")))
	must.False(t, exists(filepath.Join(root, "d/f")))
}

func TestUnpack_ChainedHardLinksToALowerFile(t *testing.T) {
	// c is a hard link to z, itself a link to the lower a; c sorts before
	// z.
	b, err := testutil.Tar(
		entry{Name: "z", Type: tar.TypeLink, Linkname: "a"},
		entry{Name: "c", Type: tar.TypeLink, Linkname: "z"},
		entry{Name: "b", Type: tar.TypeLink, Linkname: "c"},
	)
	must.NoError(t, err)
	layer := filepath.Join(t.TempDir(), "layer")
	must.NoError(t, os.Mkdir(layer, 0o755))
	u := newUnpacker(layer, hclog.NewNullLogger())
	must.NoError(t, u.apply(context.Background(), 1, bytes.NewReader(b)))
	must.Eq(t, []layerLink{{Path: "z", Target: "a"}, {Path: "c", Target: "a"}, {Path: "b", Target: "a"}}, u.meta(v1.Hash{}).Links)

	root := mustUnpack(t,
		[]entry{{Name: "a", Body: "a"}},
		[]entry{
			{Name: "z", Type: tar.TypeLink, Linkname: "a"},
			{Name: "c", Type: tar.TypeLink, Linkname: "z"},
		},
	)
	var a, c, z unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(root, "a"), &a))
	must.NoError(t, unix.Lstat(filepath.Join(root, "c"), &c))
	must.NoError(t, unix.Lstat(filepath.Join(root, "z"), &z))
	must.Eq(t, a.Ino, c.Ino)
	must.Eq(t, a.Ino, z.Ino)
}

func TestUnpack_DirectoryMetadataOfTheLastDeclaration(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	must.NoError(t, os.WriteFile(outside, []byte("s"), 0o600))
	root := mustUnpack(t, []entry{
		// Declared twice: the second declaration counts.
		{Name: "twice/", Type: tar.TypeDir, Mode: 0o700},
		{Name: "twice/f", Body: "f"},
		{Name: "twice/", Type: tar.TypeDir, Mode: 0o750},
		// A directory replaced by a file or a symlink leaves its mode
		// behind.
		{Name: "file/", Type: tar.TypeDir, Mode: 0o777},
		{Name: "file", Body: "f", Mode: 0o640},
		{Name: "link/", Type: tar.TypeDir, Mode: 0o777},
		{Name: "link/sub/", Type: tar.TypeDir, Mode: 0o777},
		{Name: "link", Type: tar.TypeSymlink, Linkname: outside},
	})
	fi, err := os.Stat(filepath.Join(root, "twice"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o750), fi.Mode().Perm())
	fi, err = os.Stat(filepath.Join(root, "file"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o640), fi.Mode().Perm())
	fi, err = os.Stat(outside)
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o600), fi.Mode().Perm())
}

// refuseLinksFromLayers makes a's links from outside the rootfs fail as at
// a file system's link limit (after the kernel's check that the new name is
// free).
func refuseLinksFromLayers(a *assembler) {
	a.link = func(oldname, newname string) error {
		if strings.HasPrefix(oldname, a.root+string(filepath.Separator)) {
			return os.Link(oldname, newname)
		}
		err := unix.EMLINK
		if exists(newname) {
			err = unix.EEXIST
		}
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: err}
	}
}

func TestUnpack_CopiesLinkOnlyToTheirOwnCopy(t *testing.T) {
	// A layer that comes twice in an image (the same diff ID, so the same
	// unpacked directory) is copied twice. In between, its first copy's
	// parent became a symlink to a host path: the second copy must not
	// link to what that path names now.
	host := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(host, "x"), []byte("host"), 0o644))
	dir := t.TempDir()
	unpack := func(name string, entries ...entry) (string, *layerMeta) {
		b, err := testutil.Tar(entries...)
		must.NoError(t, err)
		layer := filepath.Join(dir, name)
		must.NoError(t, os.Mkdir(layer, 0o755))
		u := newUnpacker(layer, hclog.NewNullLogger())
		must.NoError(t, u.apply(context.Background(), 1, bytes.NewReader(b)))
		return layer, u.meta(v1.Hash{})
	}
	twice, twiceMeta := unpack("twice",
		entry{Name: "d/x", Body: "image"},
		entry{Name: "e/y", Type: tar.TypeLink, Linkname: "d/x"},
	)
	between, betweenMeta := unpack("between", entry{Name: "d", Type: tar.TypeSymlink, Linkname: host})

	root := filepath.Join(dir, "rootfs")
	must.NoError(t, os.Mkdir(root, 0o755))
	a := newAssembler(root, hclog.NewNullLogger())
	refuseLinksFromLayers(a)
	must.NoError(t, a.apply(context.Background(), 1, twice, twiceMeta))
	must.NoError(t, a.apply(context.Background(), 2, between, betweenMeta))
	must.NoError(t, a.apply(context.Background(), 3, twice, twiceMeta))

	must.Eq(t, "image", readFile(t, filepath.Join(root, host, "x")))
	must.Eq(t, "image", readFile(t, filepath.Join(root, "e/y")))
	var x, y, h unix.Stat_t
	must.NoError(t, unix.Lstat(filepath.Join(root, host, "x"), &x))
	must.NoError(t, unix.Lstat(filepath.Join(root, "e/y"), &y))
	must.NoError(t, unix.Lstat(filepath.Join(host, "x"), &h))
	must.Eq(t, x.Ino, y.Ino)
	must.Eq(t, uint64(1), uint64(h.Nlink))
}
