package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/shoenig/test/must"
)

var (
	linuxAMD64   = v1.Platform{OS: "linux", Architecture: "amd64"}
	linuxARM64   = v1.Platform{OS: "linux", Architecture: "arm64"}
	linuxARM64v8 = v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
)

func mustParse(t testing.TB, s string) Ref {
	t.Helper()
	ref, err := ParseRef(s, nil)
	must.NoError(t, err)
	return ref
}

func digestOf(t testing.TB, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	must.NoError(t, err)
	return d
}

// checkBusyboxRootFS asserts the rootfs holds the busybox fixture.
func checkBusyboxRootFS(t *testing.T, img *Image) {
	t.Helper()
	must.True(t, filepath.IsAbs(img.RootFS))
	fi, err := os.Stat(filepath.Join(img.RootFS, "bin/busybox"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&0o111 != 0)
	target, err := os.Readlink(filepath.Join(img.RootFS, "bin/sh"))
	must.NoError(t, err)
	must.Eq(t, "busybox", target)
	fi, err = os.Stat(filepath.Join(img.RootFS, "tmp"))
	must.NoError(t, err)
	must.True(t, fi.Mode()&os.ModeSticky != 0)
	must.StrContains(t, readFile(t, filepath.Join(img.RootFS, "etc/passwd")), "nobody:x:65534:65534")
	must.Greater(t, int64(1<<20), img.Size)
}

func TestPull_TagAndDigest(t *testing.T) {
	reg := testutil.RunRegistry(t)
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/busybox:1")
	want := digestOf(t, src)

	s, ct := newTestStore(t, StoreConfig{})
	var progress progressRecorder
	img, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox:1"), PullOptions{
		Platform: linuxAMD64,
		Progress: progress.record,
	})
	must.NoError(t, err)
	must.Eq(t, want, img.Digest)
	must.Eq(t, reg.Addr+"/busybox:1", img.Ref)
	must.Eq(t, "linux", img.Platform.OS)
	must.Eq(t, "amd64", img.Platform.Architecture)
	must.Eq(t, []string{"/bin/sh"}, img.Config.Cmd)
	must.Eq(t, []string{"PATH=/bin"}, img.Config.Env)
	must.Eq(t, filepath.Join(s.rootDir, want.Hex), img.RootFS)
	checkBusyboxRootFS(t, img)

	lines := progress.all()
	must.Len(t, 3, lines, must.Sprint(lines))
	must.Eq(t, fmt.Sprintf("Pulling %s/busybox:1 (linux/amd64)", reg.Addr), lines[0])
	must.StrHasPrefix(t, "Downloaded layer 1/1 sha256:", lines[1])
	must.StrHasPrefix(t, "Unpacked "+reg.Addr+"/busybox:1 (1 layers, ", lines[2])

	// Cache layout: metadata next to the rootfs, blobs by digest.
	must.FileExists(t, filepath.Join(s.rootDir, want.Hex+".json"))
	m, err := src.Manifest()
	must.NoError(t, err)
	for _, d := range []v1.Hash{want, m.Config.Digest, m.Layers[0].Digest} {
		must.FileExists(t, filepath.Join(s.blobDir, d.Hex))
	}
	must.Eq(t, 1, ct.blobGetCount(m.Layers[0].Digest.String()))

	// By digest: cached, no registry request at all.
	before := ct.requests.Load()
	start := time.Now()
	byDigest, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox@"+want.String()), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Less(t, 50*time.Millisecond, time.Since(start))
	must.Eq(t, img.RootFS, byDigest.RootFS)
	must.Eq(t, reg.Addr+"/busybox@"+want.String(), byDigest.Ref)
	must.Eq(t, before, ct.requests.Load())

	got, ok := s.Lookup(want)
	must.True(t, ok)
	must.Eq(t, img.RootFS, got.RootFS)
	must.Eq(t, img.Config.Cmd, got.Config.Cmd)
}

func TestPull_CachedWithRegistryStopped(t *testing.T) {
	reg := testutil.RunRegistry(t)
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/busybox:1")
	want := digestOf(t, src)
	dir := t.TempDir()

	s, _ := newTestStore(t, StoreConfig{Dir: dir})
	first, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox@"+want.String()), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	_, err = s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox:1"), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)

	reg.Stop()
	var progress progressRecorder
	again, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox@"+want.String()), PullOptions{Platform: linuxAMD64, Progress: progress.record})
	must.NoError(t, err)
	must.Eq(t, first.RootFS, again.RootFS)
	must.SliceEmpty(t, progress.all())

	// A tag resolved before is used as is unless ForcePull.
	byTag, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox:1"), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Eq(t, want, byTag.Digest)
	_, err = s.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox:1"), PullOptions{Platform: linuxAMD64, ForcePull: true})
	must.ErrorIs(t, err, ErrUnreachable)

	// A new store on the same directory (a driver restart) finds the
	// image and the tag.
	s.Close()
	s2, _ := newTestStore(t, StoreConfig{Dir: dir})
	got, ok := s2.Lookup(want)
	must.True(t, ok)
	must.Eq(t, first.RootFS, got.RootFS)
	must.Eq(t, []string{"/bin/sh"}, got.Config.Cmd)
	byTag, err = s2.Pull(context.Background(), mustParse(t, reg.Addr+"/busybox:1"), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Eq(t, first.RootFS, byTag.RootFS)
}

func TestPull_ConcurrentPullsDownloadOnce(t *testing.T) {
	reg := testutil.RunRegistry(t)
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/busybox:1")
	m, err := src.Manifest()
	must.NoError(t, err)

	s, ct := newTestStore(t, StoreConfig{})
	ref := mustParse(t, reg.Addr+"/busybox:1")
	const n = 8
	var (
		wg      sync.WaitGroup
		results [n]*Image
		errs    [n]error
		lines   [n]progressRecorder
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64, Progress: lines[i].record})
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		must.NoError(t, errs[i])
		must.Eq(t, results[0].RootFS, results[i].RootFS)
	}
	must.Eq(t, int64(1), s.blobFetches.Load())
	must.Eq(t, 1, ct.blobGetCount(m.Layers[0].Digest.String()))
	must.Eq(t, 1, ct.blobGetCount(m.Config.Digest.String()))
}

func TestPull_CancelledCallerDoesNotBreakOthers(t *testing.T) {
	reg := testutil.RunRegistry(t)
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/busybox:1")
	s, _ := newTestStore(t, StoreConfig{})
	ref := mustParse(t, reg.Addr+"/busybox:1")

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Pull(cancelled, ref, PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, context.Canceled)

	img, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	checkBusyboxRootFS(t, img)
}

func TestPull_Layout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	amd := testutil.BusyboxImage(t, linuxAMD64)
	testutil.WriteLayout(t, dir, "v1", amd)
	s, ct := newTestStore(t, StoreConfig{})

	// Without a tag: the only image.
	img, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Eq(t, digestOf(t, amd), img.Digest)
	must.Eq(t, "oci:"+dir, img.Ref)
	checkBusyboxRootFS(t, img)

	// With the tag: same image, from the cache.
	tagged, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir+":v1"), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Eq(t, img.RootFS, tagged.RootFS)
	must.Eq(t, int64(1), s.blobFetches.Load())
	must.Eq(t, int64(0), ct.requests.Load())

	// A second image with a shared layer: the layer blob is stored once.
	other, err := testutil.ImageFromLayers(linuxAMD64, v1.Config{Cmd: []string{"/bin/true"}}, mustLayers(t, amd)...)
	must.NoError(t, err)
	testutil.WriteLayout(t, dir, "v2", other)
	img2, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir+":v2"), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.NotEq(t, img.Digest, img2.Digest)
	must.Eq(t, []string{"/bin/true"}, img2.Config.Cmd)
	must.Eq(t, int64(1), s.blobFetches.Load())

	// Two images and no tag: the first.
	first, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir), PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	must.Eq(t, img.Digest, first.Digest)

	_, err = s.Pull(context.Background(), mustParse(t, "oci:"+dir+":nope"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrNotFound)
	must.StrContains(t, err.Error(), `tag "nope" not found in OCI layout `+dir+` (tags present: v1, v2)`)

	_, err = s.Pull(context.Background(), mustParse(t, "oci:"+dir+"-missing"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrNotFound)
	must.StrContains(t, err.Error(), "no OCI image layout at "+dir+"-missing")
}

func mustLayers(t testing.TB, img v1.Image) []v1.Layer {
	t.Helper()
	ls, err := img.Layers()
	must.NoError(t, err)
	return ls
}

func TestPull_LayoutIndexSelectsPlatform(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	amd := testutil.BusyboxImage(t, linuxAMD64)
	arm := testutil.BusyboxImage(t, linuxARM64v8)
	testutil.WriteLayoutIndex(t, dir, "multi", testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64": amd, "linux/arm64/v8": arm,
	}))
	s, _ := newTestStore(t, StoreConfig{})
	img, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir+":multi"), PullOptions{Platform: linuxARM64})
	must.NoError(t, err)
	must.Eq(t, digestOf(t, arm), img.Digest)
	must.Eq(t, "arm64", img.Platform.Architecture)
}

func TestPull_PlatformSelection(t *testing.T) {
	reg := testutil.RunRegistry(t)
	amd := testutil.BusyboxImage(t, linuxAMD64)
	armv8 := testutil.BusyboxImage(t, linuxARM64v8)
	arm := testutil.BusyboxImage(t, linuxARM64)
	testutil.PushIndex(t, testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64": amd, "linux/arm64/v8": armv8,
	}), reg.Addr+"/multi:v8")
	testutil.PushIndex(t, testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64": amd, "linux/arm64": arm,
	}), reg.Addr+"/multi:plain")

	s, _ := newTestStore(t, StoreConfig{})
	pull := func(ref string, p v1.Platform) (*Image, error) {
		return s.Pull(context.Background(), mustParse(t, ref), PullOptions{Platform: p})
	}

	img, err := pull(reg.Addr+"/multi:v8", linuxAMD64)
	must.NoError(t, err)
	must.Eq(t, digestOf(t, amd), img.Digest)

	// arm64 and arm64/v8 are the same platform.
	img, err = pull(reg.Addr+"/multi:v8", linuxARM64)
	must.NoError(t, err)
	must.Eq(t, digestOf(t, armv8), img.Digest)
	img, err = pull(reg.Addr+"/multi:plain", linuxARM64v8)
	must.NoError(t, err)
	must.Eq(t, digestOf(t, arm), img.Digest)
	// Unnormalised node platforms work too.
	img, err = pull(reg.Addr+"/multi:plain", v1.Platform{OS: "linux", Architecture: "aarch64"})
	must.NoError(t, err)
	must.Eq(t, digestOf(t, arm), img.Digest)

	// Index digest: resolved once, then no network.
	idxDigest := indexDigest(t, reg.Addr+"/multi:v8")
	img, err = pull(reg.Addr+"/multi@"+idxDigest, linuxAMD64)
	must.NoError(t, err)
	must.Eq(t, digestOf(t, amd), img.Digest)

	_, err = pull(reg.Addr+"/multi:v8", v1.Platform{OS: "linux", Architecture: "s390x"})
	must.ErrorIs(t, err, ErrPlatform)
	must.StrContains(t, err.Error(), "linux/s390x")
	must.StrContains(t, err.Error(), "linux/amd64, linux/arm64/v8")
	must.StrContains(t, err.Error(), reg.Addr+"/multi:v8")
}

func indexDigest(t testing.TB, ref string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, "http://"+strings.Replace(ref, "/multi:", "/v2/multi/manifests/", 1), nil)
	must.NoError(t, err)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	must.NoError(t, err)
	_ = resp.Body.Close()
	d := resp.Header.Get("Docker-Content-Digest")
	must.StrHasPrefix(t, "sha256:", d)
	return d
}

func TestPull_WrongArchitectureRefused(t *testing.T) {
	reg := testutil.RunRegistry(t)
	testutil.PushImage(t, testutil.BusyboxImage(t, linuxARM64), reg.Addr+"/armonly:1")
	s, _ := newTestStore(t, StoreConfig{})
	_, err := s.Pull(context.Background(), mustParse(t, reg.Addr+"/armonly:1"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrPlatform)
	must.StrContains(t, err.Error(), "is built for linux/arm64 but this node is linux/amd64")
	// Nothing is left behind.
	entries, err := os.ReadDir(s.rootDir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
}

func TestPull_NotFound(t *testing.T) {
	reg := testutil.RunRegistry(t)
	testutil.PushImage(t, testutil.BusyboxImage(t, linuxAMD64), reg.Addr+"/busybox:1")
	s, _ := newTestStore(t, StoreConfig{})
	for _, ref := range []string{
		reg.Addr + "/busybox:2",
		reg.Addr + "/nosuchrepo:1",
		reg.Addr + "/busybox@sha256:" + strings.Repeat("0", 64),
	} {
		_, err := s.Pull(context.Background(), mustParse(t, ref), PullOptions{Platform: linuxAMD64})
		must.ErrorIs(t, err, ErrNotFound)
		must.StrContains(t, err.Error(), fmt.Sprintf("image %q not found in registry (check the repository and tag)", ref))
	}
}

func TestPull_Unreachable(t *testing.T) {
	s, _ := newTestStore(t, StoreConfig{})
	start := time.Now()
	_, err := s.Pull(context.Background(), mustParse(t, "127.0.0.1:1/busybox:1"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrUnreachable)
	must.StrHasPrefix(t, "registry 127.0.0.1:1 unreachable: ", err.Error())
	must.StrContains(t, err.Error(), "connection refused")
	must.StrContains(t, err.Error(), "check the address or the client's network")
	must.Less(t, 5*time.Second, time.Since(start))
}

func TestPull_Timeout(t *testing.T) {
	// A server that accepts connections and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				buf := make([]byte, 1024)
				for {
					if _, err := c.Read(buf); err != nil {
						_ = c.Close()
						return
					}
				}
			}()
		}
	}()

	s, _ := newTestStore(t, StoreConfig{})
	start := time.Now()
	_, err = s.Pull(context.Background(), mustParse(t, l.Addr().String()+"/busybox:1"), PullOptions{Platform: linuxAMD64, Timeout: 300 * time.Millisecond})
	must.ErrorIs(t, err, context.DeadlineExceeded)
	must.StrContains(t, err.Error(), "timed out after 300ms")
	must.Less(t, 5*time.Second, time.Since(start))
}

func TestPull_ClosedStore(t *testing.T) {
	s, _ := newTestStore(t, StoreConfig{})
	s.Close()
	_, err := s.Pull(context.Background(), mustParse(t, "oci:/nonexistent"), PullOptions{})
	must.Error(t, err)
	must.True(t, errors.Is(err, errClosed))
}

func TestPull_TruncatedDownloadNeverCached(t *testing.T) {
	reg := testutil.RunRegistry(t)
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/busybox:1")
	m, err := src.Manifest()
	must.NoError(t, err)
	s, ct := newTestStore(t, StoreConfig{})
	ref := mustParse(t, reg.Addr+"/busybox:1")

	ct.truncate.Store(true)
	_, err = s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64})
	must.Error(t, err)
	must.False(t, exists(s.blobPath(m.Layers[0].Digest)))
	entries, err := os.ReadDir(s.rootDir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
	blobs, err := os.ReadDir(s.blobDir)
	must.NoError(t, err)
	for _, b := range blobs {
		must.False(t, strings.HasPrefix(b.Name(), tmpPrefix), must.Sprintf("leftover %s", b.Name()))
	}

	ct.truncate.Store(false)
	img, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64})
	must.NoError(t, err)
	checkBusyboxRootFS(t, img)
}

// staticKeychain returns one authenticator for every registry.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

func TestPull_Auth(t *testing.T) {
	reg := testutil.RunRegistryWith(t, testutil.RegistryOptions{Username: "ferry", Password: "s3cret"})
	creds := &authn.Basic{Username: "ferry", Password: "s3cret"}
	src := testutil.BusyboxImage(t, linuxAMD64)
	testutil.PushImage(t, src, reg.Addr+"/private:1", remote.WithAuth(creds))
	ref := mustParse(t, reg.Addr+"/private:1")

	s, _ := newTestStore(t, StoreConfig{})
	_, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrUnauthorized)
	must.StrContains(t, err.Error(), fmt.Sprintf("registry refused access to image %q", ref.Raw))
	must.StrContains(t, err.Error(), "auth")

	_, err = s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64, Auth: &authn.Basic{Username: "ferry", Password: "wrong"}})
	must.ErrorIs(t, err, ErrUnauthorized)

	img, err := s.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64, Auth: creds})
	must.NoError(t, err)
	must.Eq(t, digestOf(t, src), img.Digest)

	s2, _ := newTestStore(t, StoreConfig{})
	img, err = s2.Pull(context.Background(), ref, PullOptions{Platform: linuxAMD64, Keychain: staticKeychain{creds}})
	must.NoError(t, err)
	must.Eq(t, digestOf(t, src), img.Digest)
}
