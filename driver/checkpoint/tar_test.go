package checkpoint

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// upperTree builds in dir what an overlay upper directory may hold.
func upperTree(t *testing.T, dir string) {
	t.Helper()
	at := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)
	ts := unix.NsecToTimespec(mtime.UnixNano())
	touch := func(p string) {
		must.NoError(t, unix.UtimesNanoAt(unix.AT_FDCWD, at(p), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	file := func(p, data string, mode os.FileMode, uid, gid int) {
		must.NoError(t, os.WriteFile(at(p), []byte(data), 0o600))
		must.NoError(t, os.Lchown(at(p), uid, gid))
		must.NoError(t, os.Chmod(at(p), mode))
		touch(p)
	}
	mkdir := func(p string, mode os.FileMode, uid, gid int) {
		must.NoError(t, os.Mkdir(at(p), 0o700))
		must.NoError(t, os.Lchown(at(p), uid, gid))
		must.NoError(t, os.Chmod(at(p), mode))
	}
	xattr := func(p, name, value string) {
		must.NoError(t, unix.Lsetxattr(at(p), name, []byte(value), 0))
	}

	mkdir("etc", 0o755, 0, 0)
	file("etc/app.conf", "key = value\n", 0o640, 1000, 2000)
	file("etc/empty", "", 0o600, 0, 0)
	mkdir("bin", 0o755, 0, 0)
	file("bin/tool", strings.Repeat("x", 70000), 0o4755|os.ModeSetuid, 0, 0)
	must.NoError(t, os.Chmod(at("bin/tool"), 0o755|os.ModeSetuid))
	touch("bin/tool")
	mkdir("shared", 0o775|os.ModeSetgid, 0, 100)
	mkdir("tmp", 0o777|os.ModeSticky, 0, 0)

	must.NoError(t, os.Symlink("app.conf", at("etc/link")))
	must.NoError(t, os.Lchown(at("etc/link"), 1000, 1000))
	touch("etc/link")
	must.NoError(t, os.Symlink("/etc/passwd", at("abs-link")))

	file("hard1", "linked", 0o644, 0, 0)
	must.NoError(t, os.Link(at("hard1"), at("shared/hard2")))

	// An overlay whiteout: a 0:0 character device.
	must.NoError(t, unix.Mknod(at("etc/deleted"), unix.S_IFCHR, int(unix.Mkdev(0, 0))))
	touch("etc/deleted")
	// An opaque directory.
	mkdir("opaque", 0o755, 0, 0)
	xattr("opaque", "trusted.overlay.opaque", "y")
	file("opaque/new", "fresh", 0o644, 0, 0)

	file("attrs", "a", 0o644, 0, 0)
	xattr("attrs", "user.note", "hello")
	xattr("attrs", "user.empty", "")
	xattr("attrs", "trusted.binary", "a\x00b\xff")
	xattr("attrs", "trusted.overlay.origin", "\x00\xfbhandle")
	must.NoError(t, unix.Lsetxattr(at("etc/link"), "trusted.link", []byte("l"), 0))

	must.NoError(t, unix.Mkfifo(at("fifo"), 0o620))
	touch("fifo")

	long := "deep/" + strings.Repeat("d", 120) + "/" + strings.Repeat("f", 130)
	must.NoError(t, os.MkdirAll(filepath.Dir(at(long)), 0o755))
	file(long, "long", 0o644, 0, 0)

	// A socket is left out of the tar.
	l, err := net.Listen("unix", at("sock"))
	must.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })

	for _, d := range []string{"etc", "bin", "shared", "opaque", "tmp"} {
		touch(d)
	}
}

// node is what the round trip must preserve about one file.
type node struct {
	mode     uint32
	uid, gid uint32
	mtime    int64
	size     int64
	data     string
	link     string
	rdev     uint64
	xattrs   map[string]string
	hardlink string // first path of the inode's links, by walk order
}

func snapshot(t *testing.T, root string) map[string]node {
	t.Helper()
	out := make(map[string]node)
	inodes := make(map[uint64]string)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Nano(), rdev: st.Rdev}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.size, n.data = st.Size, string(data)
		case unix.S_IFLNK:
			n.link, _ = os.Readlink(p)
		case unix.S_IFDIR:
			// Directory sizes depend on the filesystem.
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if first, ok := inodes[st.Ino]; ok {
				n.hardlink = first
			} else {
				inodes[st.Ino] = rel
				n.hardlink = rel
			}
		}
		xa, err := readXattrs(p)
		if err != nil {
			return err
		}
		n.xattrs = xa
		out[rel] = n
		return nil
	})
	must.NoError(t, err)
	return out
}

func roundTrip(t *testing.T, src string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	must.NoError(t, packTree(context.Background(), src, &buf))
	dst := filepath.Join(t.TempDir(), "upper")
	must.NoError(t, os.Mkdir(dst, 0o700))
	must.NoError(t, unpackTree(bytes.NewReader(buf.Bytes()), dst))
	return dst, buf.Bytes()
}

func TestPackRoundTrip(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "upper")
	must.NoError(t, os.Mkdir(src, 0o700))
	upperTree(t, src)

	dst, data := roundTrip(t, src)
	t.Logf("tar of %d bytes", len(data))

	want, got := snapshot(t, src), snapshot(t, dst)
	delete(want, "sock")
	// Dropped when packing: it names an inode of this node's image
	// filesystem.
	delete(want["attrs"].xattrs, "trusted.overlay.origin")
	// Dropped when unpacking: trusted.* but the opaque marker.
	delete(want["attrs"].xattrs, "trusted.binary")
	delete(want["etc/link"].xattrs, "trusted.link")
	for _, n := range []string{"attrs", "etc/link"} {
		if len(want[n].xattrs) == 0 {
			w := want[n]
			w.xattrs = nil
			want[n] = w
		}
	}

	var names []string
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s: missing after the round trip", name)
			continue
		}
		w := want[name]
		if name == "." {
			// The root keeps the mode and owner it was created with.
			w.mode, w.uid, w.gid = g.mode, g.uid, g.gid
		}
		must.Eq(t, w, g, must.Sprintf("entry %s", name))
	}
	must.MapLen(t, len(want), got)

	// Spot checks of what matters to overlayfs and the container.
	must.Eq(t, "y", got["opaque"].xattrs["trusted.overlay.opaque"])
	must.Eq(t, uint32(unix.S_IFCHR), got["etc/deleted"].mode&unix.S_IFMT)
	must.Eq(t, uint64(0), got["etc/deleted"].rdev)
	must.Eq(t, "hard1", got["shared/hard2"].hardlink)
	must.Eq(t, uint32(unix.S_ISUID), got["bin/tool"].mode&unix.S_ISUID)
	must.Eq(t, uint32(unix.S_ISGID), got["shared"].mode&unix.S_ISGID)
	must.Eq(t, "", got["attrs"].xattrs["user.empty"])
	must.MapContainsKey(t, got["attrs"].xattrs, "user.empty")
	must.MapNotContainsKey(t, got["attrs"].xattrs, "trusted.overlay.origin")
}

func TestPackCancelled(t *testing.T) {
	src := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o600))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := packTree(ctx, src, &bytes.Buffer{})
	must.True(t, errors.Is(err, context.Canceled), must.Sprintf("error: %v", err))
}

// evilTar builds a tar from headers; regular files get body "x".
func evilTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = 1
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		must.NoError(t, tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte("x"))
			must.NoError(t, err)
		}
	}
	must.NoError(t, tw.Close())
	return buf.Bytes()
}

func TestUnpackRefusesEscapes(t *testing.T) {
	requireRoot(t)
	cases := map[string][]*tar.Header{
		"dotdot": {{Name: "../evil", Typeflag: tar.TypeReg}},
		"nested dotdot": {
			{Name: "a/", Typeflag: tar.TypeDir},
			{Name: "a/../../evil", Typeflag: tar.TypeReg},
		},
		"absolute": {{Name: "/evil", Typeflag: tar.TypeReg}},
		"through symlink": {
			{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"},
			{Name: "a/evil", Typeflag: tar.TypeReg},
		},
		"hard link out": {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../outside/target"}},
		"hard link through symlink": {
			{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"},
			{Name: "h", Typeflag: tar.TypeLink, Linkname: "a/target"},
		},
		"dir replaced by symlink": {
			{Name: "a/", Typeflag: tar.TypeDir},
			{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"},
			{Name: "a/evil", Typeflag: tar.TypeReg},
		},
	}
	for name, hdrs := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			must.NoError(t, os.Mkdir(outside, 0o755))
			must.NoError(t, os.WriteFile(filepath.Join(outside, "target"), []byte("secret"), 0o600))
			upper := filepath.Join(base, "upper")
			must.NoError(t, os.Mkdir(upper, 0o700))
			for _, h := range hdrs {
				h.Linkname = strings.ReplaceAll(h.Linkname, "OUTSIDE", outside)
			}
			err := unpackTree(bytes.NewReader(evilTar(t, hdrs...)), upper)
			must.Error(t, err)
			t.Logf("%s: %v", name, err)
			must.FileNotExists(t, filepath.Join(base, "evil"))
			must.FileNotExists(t, filepath.Join(outside, "evil"))
			must.FileNotExists(t, filepath.Join(upper, "h"))
		})
	}
}
