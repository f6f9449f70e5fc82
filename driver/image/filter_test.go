package image

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// rawEntry is a tar header and the body of a regular file.
type rawEntry struct {
	hdr  tar.Header
	body string
}

// rawTar writes entries as a PAX tar, with the headers as given (devices,
// xattrs) but for the size of regular files.
func rawTar(t *testing.T, entries ...rawEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.Format = tar.FormatPAX
		h.ModTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		must.NoError(t, tw.WriteHeader(&h))
		if h.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			must.NoError(t, err)
		}
	}
	must.NoError(t, tw.Close())
	return buf.Bytes()
}

func file(name, body string) rawEntry {
	return rawEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg}, body: body}
}

func dir(name string) rawEntry {
	return rawEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}

func device(name string, typ byte, major, minor int64) rawEntry {
	return rawEntry{hdr: tar.Header{Name: name, Typeflag: typ, Mode: 0o666, Devmajor: major, Devminor: minor}}
}

func withXattrs(e rawEntry, kv ...string) rawEntry {
	e.hdr.PAXRecords = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		e.hdr.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
	}
	return e
}

// fileCap is a security.capability value (VFS_CAP_REVISION_2) that gives
// CAP_NET_RAW, as ping has.
func fileCap() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x1) // revision 2, effective
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_RAW)
	return string(b)
}

// xattrs returns the extended attributes of path, without following a
// symlink.
func xattrs(t *testing.T, path string) map[string]string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	must.NoError(t, err)
	out := map[string]string{}
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		val := make([]byte, 4096)
		m, err := unix.Lgetxattr(path, string(name), val)
		must.NoError(t, err)
		out[string(name)] = string(val[:m])
	}
	return out
}

func fileType(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	must.NoError(t, unix.Lstat(path, &st))
	return st.Mode & unix.S_IFMT
}

// TestUnpack_Filter checks what layers may put on the node: no device
// nodes (an overlay whiteout still hides lower files), FIFOs, and only the
// extended attributes keepXattr allows, in the layer cache and in the
// assembled rootfs.
func TestUnpack_Filter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted.* and security.* extended attributes and device nodes need root")
	}
	base := rawTar(t,
		dir("etc/"),
		file("etc/gone", "lower"),
		file("etc/kept", "lower"),
		dir("opq/"),
		file("opq/lower", "lower"),
	)
	cases := []struct {
		name  string
		layer []rawEntry
		// check gets the rootfs and the top layer's directory.
		check func(t *testing.T, root, layer string)
	}{{
		name: "char device",
		layer: []rawEntry{
			dir("dev/"),
			device("dev/mem", tar.TypeChar, 1, 1),
			// A hard link to it is left out too.
			{hdr: tar.Header{Name: "dev/mem2", Typeflag: tar.TypeLink, Linkname: "dev/mem"}},
		},
		check: func(t *testing.T, root, layer string) {
			for _, d := range []string{root, layer} {
				must.DirExists(t, filepath.Join(d, "dev"))
				must.FileNotExists(t, filepath.Join(d, "dev/mem"))
				must.FileNotExists(t, filepath.Join(d, "dev/mem2"))
			}
		},
	}, {
		name:  "block device",
		layer: []rawEntry{device("sda", tar.TypeBlock, 8, 0)},
		check: func(t *testing.T, root, layer string) {
			must.FileNotExists(t, filepath.Join(layer, "sda"))
			must.FileNotExists(t, filepath.Join(root, "sda"))
		},
	}, {
		name:  "device replaced later in the layer",
		layer: []rawEntry{device("x", tar.TypeChar, 1, 3), file("x", "file")},
		check: func(t *testing.T, root, layer string) {
			must.Eq(t, "file", readFile(t, filepath.Join(root, "x")))
		},
	}, {
		name:  "fifo",
		layer: []rawEntry{{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o620}}},
		check: func(t *testing.T, root, layer string) {
			for _, d := range []string{root, layer} {
				must.Eq(t, uint32(unix.S_IFIFO), fileType(t, filepath.Join(d, "run/fifo")))
			}
		},
	}, {
		name: "overlay whiteout",
		layer: []rawEntry{
			device("etc/gone", tar.TypeChar, 0, 0),
			// Replaces what the same layer wrote there before.
			file("etc/new", "new"),
			device("etc/new", tar.TypeChar, 0, 0),
		},
		check: func(t *testing.T, root, layer string) {
			must.FileNotExists(t, filepath.Join(root, "etc/gone"))
			must.FileNotExists(t, filepath.Join(root, "etc/new"))
			must.Eq(t, "lower", readFile(t, filepath.Join(root, "etc/kept")))
			// Kept as an OCI marker in the layer, no device anywhere.
			must.Eq(t, uint32(unix.S_IFREG), fileType(t, filepath.Join(layer, "etc/.wh.gone")))
			must.FileNotExists(t, filepath.Join(layer, "etc/gone"))
			must.FileNotExists(t, filepath.Join(root, "etc/.wh.gone"))
		},
	}, {
		name:  "overlay opaque directory",
		layer: []rawEntry{withXattrs(dir("opq/"), "trusted.overlay.opaque", "y"), file("opq/own", "own")},
		check: func(t *testing.T, root, layer string) {
			must.FileNotExists(t, filepath.Join(root, "opq/lower"))
			must.Eq(t, "own", readFile(t, filepath.Join(root, "opq/own")))
			must.FileExists(t, filepath.Join(layer, "opq/.wh..wh..opq"))
			must.MapEmpty(t, xattrs(t, filepath.Join(layer, "opq")))
		},
	}, {
		name:  "OCI whiteout",
		layer: []rawEntry{file("etc/.wh.gone", ""), file("opq/.wh..wh..opq", "")},
		check: func(t *testing.T, root, layer string) {
			must.FileNotExists(t, filepath.Join(root, "etc/gone"))
			must.FileNotExists(t, filepath.Join(root, "opq/lower"))
			must.Eq(t, "lower", readFile(t, filepath.Join(root, "etc/kept")))
		},
	}, {
		name: "xattrs",
		layer: []rawEntry{
			withXattrs(file("bin/ping", "ping"),
				"user.note", "hello",
				"user.overlay.opaque", "y",
				"trusted.evil", "x",
				"trusted.overlay.redirect", "/etc",
				"security.selinux", "system_u:object_r:shadow_t:s0",
				"security.capability", fileCap()),
			// Would make the directory opaque to overlayfs if it
			// were "y".
			withXattrs(dir("opq/"), "trusted.overlay.opaque", "x", "user.dir", "d"),
		},
		check: func(t *testing.T, root, layer string) {
			want := map[string]string{"user.note": "hello", "security.capability": fileCap()}
			for _, d := range []string{root, layer} {
				must.Eq(t, want, xattrs(t, filepath.Join(d, "bin/ping")))
				must.Eq(t, map[string]string{"user.dir": "d"}, xattrs(t, filepath.Join(d, "opq")))
			}
			must.Eq(t, "lower", readFile(t, filepath.Join(root, "opq/lower")))
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root, err := unpackTars(t, nil, base, rawTar(t, tc.layer...))
			must.NoError(t, err)
			tc.check(t, root, filepath.Join(filepath.Dir(root), "layer2"))
		})
	}
}

func TestKeepXattr(t *testing.T) {
	for name, want := range map[string]bool{
		"user.note":                true,
		"user.overlay.opaque":      false,
		"security.capability":      true,
		"system.posix_acl_access":  true,
		"system.posix_acl_default": true,
		"trusted.overlay.opaque":   false,
		"trusted.anything":         false,
		"security.selinux":         false,
		"security.ima":             false,
		"system.nfs4_acl":          false,
		"":                         false,
	} {
		must.Eq(t, want, KeepXattr(name), must.Sprintf("%q", name))
	}
}
