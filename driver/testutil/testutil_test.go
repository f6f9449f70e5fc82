package testutil

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/shoenig/test/must"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

func TestBusyboxImage_Reproducible(t *testing.T) {
	a := BusyboxImage(t, amd64)
	b := BusyboxImage(t, amd64)
	da, err := a.Digest()
	must.NoError(t, err)
	db, err := b.Digest()
	must.NoError(t, err)
	must.Eq(t, da, db)

	arm := BusyboxImage(t, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	dc, err := arm.Digest()
	must.NoError(t, err)
	must.NotEq(t, da, dc)

	cfg, err := arm.ConfigFile()
	must.NoError(t, err)
	must.Eq(t, "arm64", cfg.Architecture)
	must.Eq(t, "v8", cfg.Variant)
	must.Eq(t, []string{"PATH=/bin"}, cfg.Config.Env)
	must.Eq(t, []string{"/bin/sh"}, cfg.Config.Cmd)
	mt, err := a.MediaType()
	must.NoError(t, err)
	must.Eq(t, "application/vnd.oci.image.manifest.v1+json", string(mt))
}

func TestRegistry_PushAndStop(t *testing.T) {
	reg := RunRegistry(t)
	img := BusyboxImage(t, amd64)
	PushImage(t, img, reg.Addr+"/busybox:1")

	ref, err := name.ParseReference(reg.Addr+"/busybox:1", name.Insecure)
	must.NoError(t, err)
	got, err := remote.Image(ref)
	must.NoError(t, err)
	want, _ := img.Digest()
	gotDigest, err := got.Digest()
	must.NoError(t, err)
	must.Eq(t, want, gotDigest)

	reg.Stop()
	reg.Stop() // idempotent
	_, err = http.Get("http://" + reg.Addr + "/v2/")
	must.Error(t, err)
}

func TestWriteLayoutAndIndex(t *testing.T) {
	dir := t.TempDir()
	img := BusyboxImage(t, amd64)
	WriteLayout(t, dir, "v1", img)
	idx := MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64":    img,
		"linux/arm64/v8": BusyboxImage(t, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}),
	})
	WriteLayoutIndex(t, dir, "multi", idx)

	p, err := layout.FromPath(dir)
	must.NoError(t, err)
	ii, err := p.ImageIndex()
	must.NoError(t, err)
	im, err := ii.IndexManifest()
	must.NoError(t, err)
	must.Len(t, 2, im.Manifests)
	must.Eq(t, "v1", im.Manifests[0].Annotations[RefNameAnnotation])
	must.Eq(t, "multi", im.Manifests[1].Annotations[RefNameAnnotation])

	nested, err := idx.IndexManifest()
	must.NoError(t, err)
	must.Len(t, 2, nested.Manifests)
	must.Eq(t, "linux/amd64", nested.Manifests[0].Platform.String())
	must.Eq(t, "v8", nested.Manifests[1].Platform.Variant)
}
