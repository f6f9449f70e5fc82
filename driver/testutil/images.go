package testutil

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RefNameAnnotation tags a manifest in an OCI layout's index.json.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// PushImage writes img to ref (e.g. "127.0.0.1:5000/busybox:1") over plain
// HTTP. opts may add e.g. remote.WithAuth for a registry with
// authentication.
func PushImage(t testing.TB, img v1.Image, ref string, opts ...remote.Option) {
	t.Helper()
	r := parseInsecure(t, ref)
	if err := remote.Write(r, img, append([]remote.Option{remote.WithContext(context.Background())}, opts...)...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// PushIndex writes a multi-platform index (and its images) to ref over
// plain HTTP, like PushImage.
func PushIndex(t testing.TB, idx v1.ImageIndex, ref string, opts ...remote.Option) {
	t.Helper()
	r := parseInsecure(t, ref)
	if err := remote.WriteIndex(r, idx, append([]remote.Option{remote.WithContext(context.Background())}, opts...)...); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
}

func parseInsecure(t testing.TB, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("parse %q: %v", ref, err)
	}
	return r
}

// WriteLayout adds img to the OCI image layout at dir (created if needed),
// annotated with tag as org.opencontainers.image.ref.name unless tag is
// empty.
func WriteLayout(t testing.TB, dir, tag string, img v1.Image) {
	t.Helper()
	p := openLayout(t, dir)
	if err := p.AppendImage(img, layoutOptions(tag)...); err != nil {
		t.Fatalf("write image to layout %s: %v", dir, err)
	}
}

// WriteLayoutIndex adds a multi-platform index to the OCI image layout at
// dir, like WriteLayout.
func WriteLayoutIndex(t testing.TB, dir, tag string, idx v1.ImageIndex) {
	t.Helper()
	p := openLayout(t, dir)
	if err := p.AppendIndex(idx, layoutOptions(tag)...); err != nil {
		t.Fatalf("write index to layout %s: %v", dir, err)
	}
}

func openLayout(t testing.TB, dir string) layout.Path {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		p, err := layout.FromPath(dir)
		if err != nil {
			t.Fatalf("open layout %s: %v", dir, err)
		}
		return p
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatalf("create layout %s: %v", dir, err)
	}
	return p
}

func layoutOptions(tag string) []layout.Option {
	if tag == "" {
		return nil
	}
	return []layout.Option{layout.WithAnnotations(map[string]string{RefNameAnnotation: tag})}
}

// MultiPlatformIndex builds an OCI index of images keyed by platform
// ("linux/amd64", "linux/arm64/v8", ...). The platform strings are used as
// written in the descriptors, not normalised.
func MultiPlatformIndex(t testing.TB, images map[string]v1.Image) v1.ImageIndex {
	t.Helper()
	keys := make([]string, 0, len(images))
	for k := range images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, k := range keys {
		p := ParsePlatform(t, k)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        images[k],
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return idx
}

// ParsePlatform splits "os/arch[/variant]" without normalising it.
func ParsePlatform(t testing.TB, s string) v1.Platform {
	t.Helper()
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		t.Fatalf("platform %q: want os/arch[/variant]", s)
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p
}
