package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxPath is the static busybox copied into test images (Debian package
// busybox-static).
const BusyboxPath = "/bin/busybox"

// BusyboxApplets are the /bin/<applet> -> busybox symlinks in BusyboxImage.
var BusyboxApplets = []string{
	"sh", "echo", "cat", "sleep", "head", "stty", "mktemp", "ls", "id", "kill",
	"true", "false", "env", "pwd", "printf", "touch", "tty", "date", "seq",
	"grep", "yes", "rm", "mkdir", "hostname", "wc",
}

// fixtureTime is the mtime of every entry, so images are reproducible.
var fixtureTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

var busyboxLayer struct {
	once sync.Once
	gz   []byte
	err  error
}

// BusyboxImage returns an OCI image (OCI media types) with one layer holding
// /bin/busybox (the host's static busybox), /bin/<applet> symlinks for
// BusyboxApplets, /etc/passwd (root 0, nobody 65534), /etc/group,
// /etc/hostname and /tmp (1777). Its config sets PATH=/bin, Cmd ["/bin/sh"]
// and platform's os/arch/variant. The same platform always gives the same
// digest within one build of busybox.
func BusyboxImage(t testing.TB, platform v1.Platform) v1.Image {
	t.Helper()
	busyboxLayer.once.Do(func() {
		busyboxLayer.gz, busyboxLayer.err = buildBusyboxLayer()
	})
	if busyboxLayer.err != nil {
		if os.IsNotExist(busyboxLayer.err) && os.Getenv("CI") == "" {
			t.Skipf("static busybox %s not found (install Debian's busybox-static package): %v", BusyboxPath, busyboxLayer.err)
		}
		t.Fatalf("build busybox layer: %v", busyboxLayer.err)
	}
	layer, err := LayerFromBytes(busyboxLayer.gz)
	if err != nil {
		t.Fatalf("busybox layer: %v", err)
	}
	img, err := ImageFromLayers(platform, v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/sh"}}, layer)
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	return img
}

// ImageFromLayers builds an OCI image from layers with the given config and
// platform.
func ImageFromLayers(platform v1.Platform, config v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		OS:           platform.OS,
		Architecture: platform.Architecture,
		Variant:      platform.Variant,
		Config:       config,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layers...)
}

// LayerFromBytes makes an OCI layer from a tar archive, gzip-compressed or
// not (compressed with gzip if not).
func LayerFromBytes(b []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// TarEntry describes one entry of a layer built with Tar.
type TarEntry struct {
	Name     string
	Type     byte // tar.TypeReg if zero
	Mode     int64
	Body     string
	Linkname string
	UID, GID int
}

// Tar writes entries as an uncompressed tar archive with fixed mtimes.
func Tar(entries ...TarEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.Mode
		if mode == 0 {
			switch typ {
			case tar.TypeDir:
				mode = 0o755
			case tar.TypeSymlink:
				mode = 0o777
			default:
				mode = 0o644
			}
		}
		hdr := &tar.Header{
			Name:     e.Name,
			Typeflag: typ,
			Mode:     mode,
			Linkname: e.Linkname,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  fixtureTime,
			Format:   tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar entry %q: %w", e.Name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				return nil, fmt.Errorf("tar entry %q: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Gzip compresses b reproducibly (no name or time in the header).
func Gzip(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func buildBusyboxLayer() ([]byte, error) {
	busybox, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, err
	}
	entries := []TarEntry{
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/busybox", Mode: 0o755, Body: string(busybox)},
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, TarEntry{Name: "bin/" + a, Type: tar.TypeSymlink, Linkname: "busybox"})
	}
	entries = append(entries,
		TarEntry{Name: "dev/", Type: tar.TypeDir},
		TarEntry{Name: "etc/", Type: tar.TypeDir},
		TarEntry{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		TarEntry{Name: "etc/group", Body: "root:x:0:\nnobody:x:65534:\n"},
		TarEntry{Name: "etc/hostname", Body: "busybox\n"},
		TarEntry{Name: "proc/", Type: tar.TypeDir},
		TarEntry{Name: "root/", Type: tar.TypeDir, Mode: 0o700},
		TarEntry{Name: "sys/", Type: tar.TypeDir},
		TarEntry{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	)
	raw, err := Tar(entries...)
	if err != nil {
		return nil, err
	}
	return Gzip(raw)
}
