package checkpoint

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// fakeCheckpoint writes a checkpoint directory with made-up contents and a
// manifest, as Create lays one out.
func fakeCheckpoint(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ckpt")
	must.NoError(t, os.MkdirAll(filepath.Join(dir, ImagesName), 0o700))
	files := map[string]string{
		"images/inventory.img": "inventory",
		"images/pages-1.img":   string(make([]byte, 8192)),
		"images/core-1.img":    "core",
		RootfsName:             "tar",
		SpecName:               `{"ociVersion":"1.2.1"}`,
	}
	for p, data := range files {
		must.NoError(t, os.WriteFile(filepath.Join(dir, filepath.FromSlash(p)), []byte(data), 0o644))
	}
	fw := newFollower(dir, nil, hclog.NewNullLogger())
	list, err := fw.finish(context.Background())
	fw.close()
	must.NoError(t, err)
	m := &Manifest{Version: Version, ContainerID: "c1", Files: list, CreatedAt: time.Now().UTC(),
		DumpDuration: 1500 * time.Millisecond, PackDuration: 20 * time.Millisecond}
	for _, f := range list {
		m.Bytes += f.Size
	}
	_, err = writeManifest(dir, m)
	must.NoError(t, err)
	return dir
}

// verify is Open with the manifest's own digest: every check but the
// comparison with a record's.
func verify(dir string) (*Manifest, error) {
	raw, err := ReadRaw(dir)
	if err != nil {
		return nil, err
	}
	return Open(dir, Digest(raw), true)
}

func TestOpen(t *testing.T) {
	dir := fakeCheckpoint(t)
	m, err := verify(dir)
	must.NoError(t, err)
	must.Eq(t, "c1", m.ContainerID)
	must.Eq(t, 1500*time.Millisecond, m.DumpDuration)
	must.Eq(t, 20*time.Millisecond, m.PackDuration)
	must.Len(t, 5, m.Files)
	must.Eq(t, "config.json", m.Files[0].Path)
	must.Eq(t, "images/core-1.img", m.Files[1].Path)
	must.Eq(t, int64(8192+9+4+3+22), m.Bytes)
}

func TestOpenRefuses(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		want   string
	}{{
		name:   "flipped byte",
		tamper: func(t *testing.T, dir string) { flipByte(t, filepath.Join(dir, "images", "pages-1.img")) },
		want:   "checkpoint file images/pages-1.img: blake3 mismatch (corrupt or tampered); refusing to restore",
	}, {
		name: "truncated",
		tamper: func(t *testing.T, dir string) {
			must.NoError(t, os.Truncate(filepath.Join(dir, "images", "pages-1.img"), 4096))
		},
		want: "checkpoint file images/pages-1.img: size 4096, manifest says 8192 (truncated or tampered); refusing to restore",
	}, {
		name: "extra image",
		tamper: func(t *testing.T, dir string) {
			must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "extra.img"), nil, 0o600))
		},
		want: "checkpoint file images/extra.img: not listed in the manifest (extra file); refusing to restore",
	}, {
		name: "extra symlink",
		tamper: func(t *testing.T, dir string) {
			must.NoError(t, os.Symlink("/etc/passwd", filepath.Join(dir, "images", "link.img")))
		},
		want: "checkpoint file images/link.img: not listed in the manifest (extra file)",
	}, {
		name:   "missing",
		tamper: func(t *testing.T, dir string) { must.NoError(t, os.Remove(filepath.Join(dir, RootfsName))) },
		want:   "checkpoint file rootfs.tar: missing; refusing to restore",
	}, {
		name: "replaced by a symlink",
		tamper: func(t *testing.T, dir string) {
			p := filepath.Join(dir, SpecName)
			must.NoError(t, os.Rename(p, p+".real"))
			must.NoError(t, os.Symlink(SpecName+".real", p))
		},
		want: "checkpoint file config.json: not a regular file",
	}, {
		name: "images dir a symlink",
		tamper: func(t *testing.T, dir string) {
			images := filepath.Join(dir, ImagesName)
			must.NoError(t, os.Rename(images, images+".real"))
			must.NoError(t, os.Symlink(ImagesName+".real", images))
		},
		want: "checkpoint file images: not listed in the manifest",
	}, {
		name: "listed path escapes",
		tamper: func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *Manifest) { m.Files[0].Path = "../outside" })
		},
		want: `checkpoint file "../outside": bad path in the manifest`,
	}, {
		name: "listed twice",
		tamper: func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *Manifest) {
				m.Files = append(m.Files, m.Files[0])
				m.Bytes += m.Files[0].Size
			})
		},
		want: "checkpoint file config.json: listed twice in the manifest",
	}, {
		name: "bytes",
		tamper: func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *Manifest) { m.Bytes++ })
		},
		want: "manifest says",
	}, {
		name: "no images",
		tamper: func(t *testing.T, dir string) {
			editManifest(t, dir, func(m *Manifest) {
				var keep []File
				for _, f := range m.Files {
					if f.Path != "images/inventory.img" {
						keep = append(keep, f)
					} else {
						m.Bytes -= f.Size
					}
				}
				m.Files = keep
			})
		},
		want: "checkpoint file images/inventory.img: not listed in the manifest; refusing to restore",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCheckpoint(t)
			tc.tamper(t, dir)
			_, err := verify(dir)
			must.ErrorContains(t, err, tc.want)
			must.True(t, errors.Is(err, ErrCorrupt), must.Sprintf("error: %v", err))
		})
	}
}

func TestOpenManifest(t *testing.T) {
	dir := fakeCheckpoint(t)
	must.NoError(t, os.Remove(filepath.Join(dir, ManifestName)))
	_, err := verify(dir)
	must.ErrorIs(t, err, ErrNoManifest)

	dir = fakeCheckpoint(t)
	// A checkpoint of a driver that hashed its files with sha256.
	editManifest(t, dir, func(m *Manifest) { m.Version = 1 })
	_, err = verify(dir)
	must.ErrorContains(t, err, "manifest version 1, this driver reads version 2")

	dir = fakeCheckpoint(t)
	must.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), []byte("{"), 0o600))
	_, err = ReadManifest(dir)
	must.ErrorContains(t, err, "decode manifest.json")
}

func editManifest(t *testing.T, dir string, edit func(*Manifest)) {
	t.Helper()
	m, err := ReadManifest(dir)
	must.NoError(t, err)
	edit(m)
	_, err = writeManifest(dir, m)
	must.NoError(t, err)
}

func TestRemove(t *testing.T) {
	dir := fakeCheckpoint(t)
	must.NoError(t, Remove(dir))
	must.DirNotExists(t, dir)
	must.NoError(t, Remove(dir))
	must.Error(t, Remove(""))
	must.Error(t, Remove("/"))
}

// Open checks the manifest's digest before anything else, and hashes the
// files only when asked: Check alone takes a flipped byte, not a wrong size.
func TestOpenDigestAndHash(t *testing.T) {
	dir := fakeCheckpoint(t)
	raw, err := ReadRaw(dir)
	must.NoError(t, err)
	digest := Digest(raw)

	_, err = Open(dir, strings.Repeat("0", 64), false)
	must.ErrorContains(t, err, "the record says")
	must.ErrorContains(t, err, "refusing the checkpoint")
	must.ErrorIs(t, err, ErrCorrupt)
	_, err = Open(dir, "", false)
	must.ErrorContains(t, err, "refusing the checkpoint")

	// A manifest that does not even parse is refused by its digest first.
	must.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), []byte("{"), 0o600))
	_, err = Open(dir, digest, false)
	must.ErrorContains(t, err, "the record says")
	must.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), raw, 0o600))

	flipByte(t, filepath.Join(dir, "images", "pages-1.img"))
	_, err = Open(dir, digest, false)
	must.NoError(t, err)
	_, err = Open(dir, digest, true)
	must.ErrorContains(t, err, "images/pages-1.img: blake3 mismatch")

	must.NoError(t, os.Truncate(filepath.Join(dir, "images", "pages-1.img"), 10))
	_, err = Open(dir, digest, false)
	must.ErrorContains(t, err, "size 10, manifest says 8192")
}

func TestDir(t *testing.T) {
	const alloc = "0d8f6a3c-1b2a-4c5d-8e9f-0a1b2c3d4e5f"
	dir, err := Dir("/var/lib/ferry/checkpoints", alloc, "web")
	must.NoError(t, err)
	must.Eq(t, "/var/lib/ferry/checkpoints/"+alloc+"/web", dir)
	for _, tc := range []struct{ alloc, task string }{
		{"..", "web"}, {"../../etc", "web"}, {"not-a-uuid", "web"}, {strings.ToUpper(alloc), "web"},
		{alloc, ""}, {alloc, "."}, {alloc, ".."}, {alloc, "a/b"}, {alloc, "a\\b"}, {alloc, "a\x00"},
	} {
		_, err := Dir("/root", tc.alloc, tc.task)
		must.Error(t, err, must.Sprintf("%q/%q", tc.alloc, tc.task))
	}
}

// TestCopy: a copy is the whole checkpoint, its manifest the same; a source
// file that no longer matches its manifest, or a destination with no room,
// leaves no copy at all (no manifest, no directory).
func TestCopy(t *testing.T) {
	src := fakeCheckpoint(t)
	raw, err := ReadRaw(src)
	must.NoError(t, err)

	dst := filepath.Join(t.TempDir(), "periodic", "a", "t")
	must.NoError(t, Copy(src, dst))
	_, err = Open(dst, Digest(raw), true)
	must.NoError(t, err)
	copied, err := ReadRaw(dst)
	must.NoError(t, err)
	must.Eq(t, string(raw), string(copied))
	must.Error(t, Copy(src, dst), must.Sprint("a copy over an existing one"))

	flipByte(t, filepath.Join(src, "images", "pages-1.img"))
	bad := filepath.Join(t.TempDir(), "bad")
	err = Copy(src, bad)
	must.ErrorIs(t, err, ErrCorrupt)
	_, err = os.Stat(bad)
	must.True(t, os.IsNotExist(err), must.Sprint("a copy that failed verification is left"))

	if os.Geteuid() != 0 {
		t.Skip("a full file system needs root to mount")
	}
	full := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", full).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", full).Run() })
	err = Copy(fakeCheckpoint(t), filepath.Join(full, "c"))
	must.ErrorIs(t, err, syscall.ENOSPC)
	entries, _ := os.ReadDir(full)
	must.SliceEmpty(t, entries, must.Sprint("a copy cut short by a full file system is left"))
}
