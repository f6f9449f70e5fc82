package checkpoint

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// fileCap is a security.capability value (VFS_CAP_REVISION_2) that gives
// CAP_NET_RAW.
func fileCap() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x1) // revision 2, effective
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_RAW)
	return string(b)
}

func xattrRecords(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[paxXattr+kv[i]] = kv[i+1]
	}
	return m
}

// TestUnpackFilter checks what a received rootfs.tar may put on the node:
// overlay whiteouts and opaque markers, FIFOs, but no other device node
// and no other trusted.* or security.* extended attribute.
func TestUnpackFilter(t *testing.T) {
	requireRoot(t)
	type want struct {
		typ    uint32 // S_IFMT bits; 0: must not exist
		rdev   uint64
		xattrs map[string]string
	}
	cases := []struct {
		name string
		hdrs []*tar.Header
		want map[string]want
	}{{
		name: "char device",
		hdrs: []*tar.Header{{Name: "mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1}},
		want: map[string]want{"mem": {}},
	}, {
		name: "block device and a hard link to it",
		hdrs: []*tar.Header{
			{Name: "dev/", Typeflag: tar.TypeDir},
			{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8},
			{Name: "dev/sda-too", Typeflag: tar.TypeLink, Linkname: "dev/sda"},
		},
		want: map[string]want{"dev": {typ: unix.S_IFDIR}, "dev/sda": {}, "dev/sda-too": {}},
	}, {
		name: "device replaced by a file",
		hdrs: []*tar.Header{
			{Name: "x", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
			{Name: "x", Typeflag: tar.TypeReg},
			{Name: "y", Typeflag: tar.TypeLink, Linkname: "x"},
		},
		want: map[string]want{"x": {typ: unix.S_IFREG}, "y": {typ: unix.S_IFREG}},
	}, {
		name: "whiteout",
		hdrs: []*tar.Header{{Name: "gone", Typeflag: tar.TypeChar}},
		want: map[string]want{"gone": {typ: unix.S_IFCHR, rdev: 0}},
	}, {
		name: "fifo",
		hdrs: []*tar.Header{{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o620}},
		want: map[string]want{"fifo": {typ: unix.S_IFIFO}},
	}, {
		name: "opaque directory",
		hdrs: []*tar.Header{{Name: "opq/", Typeflag: tar.TypeDir, PAXRecords: xattrRecords(overlayOpaque, "y")}},
		want: map[string]want{"opq": {typ: unix.S_IFDIR, xattrs: map[string]string{overlayOpaque: "y"}}},
	}, {
		name: "xattrs",
		hdrs: []*tar.Header{
			{Name: "f", Typeflag: tar.TypeReg, PAXRecords: xattrRecords(
				"user.note", "hello",
				"user.overlay.opaque", "y",
				"trusted.evil", "x",
				"trusted.overlay.redirect", "/etc",
				"trusted.overlay.metacopy", "",
				"security.selinux", "system_u:object_r:shadow_t:s0",
				"security.capability", fileCap(),
			)},
			// Only "y" marks an opaque directory of an upper directory.
			{Name: "d/", Typeflag: tar.TypeDir, PAXRecords: xattrRecords(overlayOpaque, "x")},
		},
		want: map[string]want{
			"f": {typ: unix.S_IFREG, xattrs: map[string]string{"user.note": "hello", "security.capability": fileCap()}},
			"d": {typ: unix.S_IFDIR},
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			upper := filepath.Join(t.TempDir(), "upper")
			must.NoError(t, os.Mkdir(upper, 0o700))
			must.NoError(t, unpackTree(bytes.NewReader(evilTar(t, tc.hdrs...)), upper))
			for name, w := range tc.want {
				p := filepath.Join(upper, name)
				var st unix.Stat_t
				err := unix.Lstat(p, &st)
				if w.typ == 0 {
					must.ErrorIs(t, err, unix.ENOENT, must.Sprintf("%s must not exist", name))
					continue
				}
				must.NoError(t, err)
				must.Eq(t, w.typ, st.Mode&unix.S_IFMT, must.Sprintf("type of %s", name))
				must.Eq(t, w.rdev, st.Rdev, must.Sprintf("device of %s", name))
				got, err := readXattrs(p)
				must.NoError(t, err)
				if len(w.xattrs) == 0 {
					must.MapEmpty(t, got, must.Sprintf("xattrs of %s", name))
				} else {
					must.Eq(t, w.xattrs, got, must.Sprintf("xattrs of %s", name))
				}
			}
		})
	}
}

func TestKeepXattr(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        bool
	}{
		{"trusted.overlay.opaque", "y", true},
		{"trusted.overlay.opaque", "x", false},
		{"trusted.overlay.redirect", "/a", false},
		{"trusted.overlay.uuid", "u", false},
		{"trusted.other", "", false},
		{"user.note", "v", true},
		{"user.overlay.opaque", "y", false},
		{"security.capability", "c", true},
		{"security.selinux", "l", false},
		{"system.posix_acl_access", "a", true},
		{"system.posix_acl_default", "a", true},
		{"system.nfs4_acl", "a", false},
	} {
		must.Eq(t, tc.want, keepXattr(tc.name, tc.value), must.Sprintf("%s=%q", tc.name, tc.value))
	}
}
