package image

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/hashicorp/go-hclog"
)

// benchImage is about 50 MB in five layers of files that do not compress,
// on top of busybox, with OCI media types (umoci refuses Docker's).
func benchImage(b *testing.B) v1.Image {
	b.Helper()
	img := testutil.BusyboxImage(b, v1.Platform{OS: "linux", Architecture: "amd64"})
	rng := rand.New(rand.NewSource(1))
	for l := 0; l < 5; l++ {
		var entries []testutil.TarEntry
		for f := 0; f < 10; f++ {
			data := make([]byte, 1<<20)
			rng.Read(data)
			entries = append(entries, testutil.TarEntry{Name: fmt.Sprintf("data/l%d/f%d.bin", l, f), Mode: 0o644, Body: string(data)})
		}
		tarball, err := testutil.Tar(entries...)
		if err != nil {
			b.Fatal(err)
		}
		layer, err := testutil.LayerFromBytes(tarball)
		if err != nil {
			b.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			b.Fatal(err)
		}
	}
	return img
}

// BenchmarkPullUnpack pulls and unpacks a 50 MB, six-layer image from a
// loopback registry into an empty cache, and, in the same run, does the same
// with `skopeo copy` + `umoci unpack`; it reports the ratio of the two
// (goal: at most 1.0) and the driver time of a start from the warm cache
// (goal: under 100 ms).
func BenchmarkPullUnpack(b *testing.B) {
	for _, tool := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed (scripts/deps.sh installs it)", tool)
		}
	}
	reg := testutil.StartRegistry(b)
	testutil.PushImage(b, benchImage(b), reg+"/bench/big:1")
	ref, err := ParseRef(reg+"/bench/big:1", []string{reg})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	var ferry, peer, cached time.Duration
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()

		start := time.Now()
		s, err := NewStore(StoreConfig{Dir: filepath.Join(dir, "ferry"), Logger: hclog.NewNullLogger()})
		if err != nil {
			b.Fatal(err)
		}
		img, err := s.Pull(ctx, ref, PullOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ferry += time.Since(start)

		start = time.Now()
		if _, err := s.Pull(ctx, ref, PullOptions{}); err != nil {
			b.Fatal(err)
		}
		s.Acquire(img.Digest)
		cached += time.Since(start)
		s.Close()

		start = time.Now()
		layout := filepath.Join(dir, "oci")
		copyCmd := exec.Command("skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://"+reg+"/bench/big:1", "oci:"+layout+":1")
		if out, err := copyCmd.CombinedOutput(); err != nil {
			b.Fatalf("skopeo copy: %v\n%s", err, out)
		}
		unpack := exec.Command("umoci", "unpack", "--image", layout+":1", filepath.Join(dir, "bundle"))
		if out, err := unpack.CombinedOutput(); err != nil {
			b.Fatalf("umoci unpack: %v\n%s", err, out)
		}
		peer += time.Since(start)
		_ = os.RemoveAll(dir)
	}
	n := time.Duration(b.N)
	b.ReportMetric(float64(ferry/n)/float64(time.Millisecond), "ms/pull")
	b.ReportMetric(float64(peer/n)/float64(time.Millisecond), "ms/skopeo+umoci")
	b.ReportMetric(float64(ferry)/float64(peer), "x_skopeo+umoci")
	b.ReportMetric(float64(cached/n)/float64(time.Microsecond)/1000, "ms/cached-start")
}
