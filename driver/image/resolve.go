package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refNameAnnotation holds a manifest's tag in an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// source is a reference resolved for one platform: the digest of the
// platform-specific manifest, and how to open the image when it is not
// cached yet.
type source struct {
	digest v1.Hash
	open   func() (v1.Image, error)
}

// resolve finds the manifest digest of ref for the node's platform. Registry
// references cost one manifest request (two for an index selected by
// digest); layouts are read from disk.
func (s *Store) resolve(ctx context.Context, ref Ref, node v1.Platform, opts PullOptions) (source, error) {
	if ref.IsLayout() {
		return resolveLayout(ref, node, opts)
	}
	return s.resolveRemote(ctx, ref, node, opts)
}

func (s *Store) remoteOptions(ctx context.Context, opts PullOptions) []remote.Option {
	ro := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(s.transport),
		remote.WithUserAgent("ferry"),
	}
	switch {
	case opts.Auth != nil:
		ro = append(ro, remote.WithAuth(opts.Auth))
	case opts.Keychain != nil:
		ro = append(ro, remote.WithAuthFromKeychain(opts.Keychain))
	default:
		ro = append(ro, remote.WithAuth(authn.Anonymous))
	}
	return ro
}

func (s *Store) resolveRemote(ctx context.Context, ref Ref, node v1.Platform, opts PullOptions) (source, error) {
	desc, err := remote.Get(ref.Remote, s.remoteOptions(ctx, opts)...)
	if err != nil {
		return source{}, registryError(ref, err)
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return source{}, registryError(ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return source{}, registryError(ref, err)
		}
		m, ok := selectManifest(node, im.Manifests, opts.VariantFallback)
		if !ok {
			return source{}, platformError(ref, node, im.Manifests)
		}
		return source{digest: m.Digest, open: func() (v1.Image, error) { return idx.Image(m.Digest) }}, nil
	case desc.MediaType.IsImage():
		return source{digest: desc.Digest, open: desc.Image}, nil
	case desc.MediaType.IsSchema1():
		return source{}, newKindError(ErrInvalid, nil, "image %q uses the Docker schema 1 manifest format, which is not supported; push it again with a current client", ref.display())
	default:
		return source{}, notImageError(ref, desc.MediaType)
	}
}

func resolveLayout(ref Ref, node v1.Platform, opts PullOptions) (source, error) {
	p, err := layout.FromPath(ref.LayoutDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return source{}, newKindError(ErrNotFound, err,
				"image %q: no OCI image layout at %s (check that the directory exists on this node and holds index.json)", ref.display(), ref.LayoutDir)
		}
		return source{}, fmt.Errorf("image %q: read OCI layout %s: %w", ref.display(), ref.LayoutDir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return source{}, layoutError(ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return source{}, layoutError(ref, err)
	}

	candidates := im.Manifests
	if ref.LayoutTag != "" {
		candidates = nil
		for _, m := range im.Manifests {
			if m.Annotations[refNameAnnotation] == ref.LayoutTag {
				candidates = append(candidates, m)
			}
		}
		if len(candidates) == 0 {
			return source{}, newKindError(ErrNotFound, nil, "image %q: tag %q not found in OCI layout %s (tags present: %s)",
				ref.display(), ref.LayoutTag, ref.LayoutDir, layoutTags(im.Manifests))
		}
	}
	if len(candidates) == 0 {
		return source{}, newKindError(ErrNotFound, nil, "image %q: OCI layout %s holds no images", ref.display(), ref.LayoutDir)
	}
	desc := candidates[0]
	if len(candidates) > 1 && hasPlatforms(candidates) {
		// Several images under one tag (or no tag): one per platform.
		m, ok := selectManifest(node, candidates, opts.VariantFallback)
		if !ok {
			return source{}, platformError(ref, node, candidates)
		}
		desc = m
	}
	return layoutSource(ref, node, idx, desc, opts)
}

// layoutSource descends from a descriptor of a layout's index to an image,
// selecting the node's platform from nested indexes.
func layoutSource(ref Ref, node v1.Platform, parent v1.ImageIndex, desc v1.Descriptor, opts PullOptions) (source, error) {
	for depth := 0; desc.MediaType.IsIndex(); depth++ {
		if depth > 4 {
			return source{}, newKindError(ErrInvalid, nil, "image %q: indexes nested too deeply", ref.display())
		}
		child, err := parent.ImageIndex(desc.Digest)
		if err != nil {
			return source{}, layoutError(ref, err)
		}
		raw, err := child.RawManifest()
		if err != nil {
			return source{}, layoutError(ref, err)
		}
		if err := verifyBytes("index", desc.Digest, raw); err != nil {
			return source{}, fmt.Errorf("image %q: %w", ref.display(), err)
		}
		im, err := child.IndexManifest()
		if err != nil {
			return source{}, layoutError(ref, err)
		}
		m, ok := selectManifest(node, im.Manifests, opts.VariantFallback)
		if !ok {
			return source{}, platformError(ref, node, im.Manifests)
		}
		parent, desc = child, m
	}
	if !desc.MediaType.IsImage() {
		return source{}, notImageError(ref, desc.MediaType)
	}
	idx := parent
	return source{digest: desc.Digest, open: func() (v1.Image, error) { return idx.Image(desc.Digest) }}, nil
}

func hasPlatforms(ms []v1.Descriptor) bool {
	for _, m := range ms {
		if m.Platform != nil {
			return true
		}
	}
	return false
}

func layoutTags(ms []v1.Descriptor) string {
	var tags []string
	for _, m := range ms {
		if t := m.Annotations[refNameAnnotation]; t != "" {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return "none"
	}
	sort.Strings(tags)
	return strings.Join(tags, ", ")
}

func layoutError(ref Ref, err error) error {
	return newKindError(ErrInvalid, err, "image %q: read OCI layout %s", ref.display(), ref.LayoutDir)
}

func platformError(ref Ref, node v1.Platform, ms []v1.Descriptor) error {
	return newKindError(ErrPlatform, nil, "image %q has no variant for this node's platform %s (the image offers: %s)",
		ref.display(), formatPlatform(node), offeredPlatforms(ms))
}

func notImageError(ref Ref, mt types.MediaType) error {
	return newKindError(ErrInvalid, nil, "image %q: media type %q is not a container image or image index", ref.display(), mt)
}
