package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PullOptions tune one Pull.
type PullOptions struct {
	// Platform is the node's platform (os/arch/variant). The matching
	// manifest is selected from an index: OS and architecture must match
	// exactly and variants are compared after normalisation (arm64/v8 is
	// arm64). A single-platform image must have the same OS and
	// architecture. Empty means the platform this process runs on.
	Platform v1.Platform
	// VariantFallback lets an index without the node's own variant serve
	// the best older variant the node runs (amd64/v3 takes v2); without it
	// the variant must match.
	VariantFallback bool
	// Auth authenticates to the registry; nil means anonymous unless
	// Keychain finds credentials.
	Auth authn.Authenticator
	// Keychain finds credentials per registry (e.g. from a docker
	// config.json file). Used when Auth is nil.
	Keychain authn.Keychain
	// ForcePull resolves a tag at the registry even if the store resolved
	// it before. Without it a cached tag is used as is, like Nomad's docker
	// driver does.
	ForcePull bool
	// Progress, if set, receives a few human-readable lines per pull
	// (start, each downloaded layer, periodic byte counts of long downloads,
	// the unpack time). It is not called for cached images.
	Progress func(msg string)
	// Timeout bounds the whole pull; 0 means none.
	Timeout time.Duration
}

// Pull returns the image ref names for the node's platform, downloading and
// unpacking it unless it is cached. Concurrent pulls of the same reference
// and platform share one download. A cached image pulled by digest (or a
// tag resolved before, unless ForcePull) is returned without network
// access; an OCI layout only has its index read.
func (s *Store) Pull(ctx context.Context, ref Ref, opts PullOptions) (*Image, error) {
	if ref.Remote == nil && ref.LayoutDir == "" {
		return nil, errors.New("image: reference is empty; parse the task's image with ParseRef")
	}
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	node := nodePlatform(opts.Platform)
	key := resolveKey(ref, node)
	if opts.VariantFallback {
		// A tag may resolve to another manifest when older variants count.
		key += " fallback"
	}

	if img, ok := s.cached(ctx, ref, node, key, opts); ok {
		return img, nil
	}

	flightKey := key
	if opts.ForcePull {
		flightKey += " force"
	}
	img, err := s.join(ctx, flightKey, opts.Progress, func(ctx context.Context, progress func(string)) (*Image, error) {
		return s.pull(ctx, ref, node, key, opts, progress)
	})
	if err != nil {
		return nil, pullContextError(ref, opts, err)
	}
	return img, nil
}

// cached returns the image without any network access when the reference
// is known to resolve to a complete image: a digest, or a tag resolved
// before (unless ForcePull).
func (s *Store) cached(ctx context.Context, ref Ref, node v1.Platform, key string, opts PullOptions) (*Image, bool) {
	if ref.IsLayout() {
		return nil, false
	}
	dref, isDigest := ref.Remote.(name.Digest)
	if !isDigest && opts.ForcePull {
		return nil, false
	}
	d, ok := s.lookupResolved(key)
	if !ok && !isDigest {
		return nil, false
	}
	if !ok {
		// A platform-specific manifest digest needs no resolution.
		h, err := v1.NewHash(dref.DigestStr())
		if err != nil {
			return nil, false
		}
		d = h
	}
	_, unpin, err := s.pinImage(ctx, d)
	if err != nil {
		return nil, false
	}
	defer unpin()
	s.mu.Lock()
	meta := s.images[d]
	s.mu.Unlock()
	if meta == nil || (meta.Platform.OS != "" && !sameOSArch(meta.Platform, node)) {
		return nil, false
	}
	if fi, err := os.Stat(meta.rootfs); err != nil || !fi.IsDir() {
		return nil, false
	}
	s.logger.Trace("image cached", "ref", ref.String(), "digest", d)
	return meta.image(ref.String()), true
}

// pull resolves the reference and materialises the image; it runs once per
// flight.
func (s *Store) pull(ctx context.Context, ref Ref, node v1.Platform, key string, opts PullOptions, progress func(string)) (*Image, error) {
	src, err := s.resolve(ctx, ref, node, opts)
	if err != nil {
		return nil, err
	}
	img, err := s.materialize(ctx, ref, node, src, progress)
	if err != nil {
		return nil, err
	}
	if !ref.IsLayout() {
		s.recordResolution(key, img.Digest)
	}
	return img, nil
}

// materialize returns the image with manifest digest src.digest, building
// its rootfs unless it is complete already. One build per digest runs at a
// time; others wait and reuse its result.
func (s *Store) materialize(ctx context.Context, ref Ref, node v1.Platform, src source, progress func(string)) (*Image, error) {
	d := src.digest
	if d.Algorithm != "sha256" {
		return nil, newKindError(ErrInvalid, nil, "image %q: manifest digest %s uses %q; only sha256 is supported", ref.display(), d, d.Algorithm)
	}
	p, unpin, err := s.pinImage(ctx, d)
	if err != nil {
		return nil, err
	}
	defer unpin()
	unlock, err := p.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	s.mu.Lock()
	meta := s.images[d]
	s.mu.Unlock()
	if meta != nil {
		if meta.Platform.OS != "" && !sameOSArch(meta.Platform, node) {
			return nil, wrongPlatformError(ref, meta.Platform, node)
		}
		return meta.image(ref.String()), nil
	}
	return s.build(ctx, ref, node, src, progress)
}

// build downloads the blobs of an image, unpacks the layers the cache does
// not have yet, and assembles its rootfs from them.
func (s *Store) build(ctx context.Context, ref Ref, node v1.Platform, src source, progress func(string)) (*Image, error) {
	d := src.digest
	start := time.Now()
	progress(fmt.Sprintf("Pulling %s (%s)", ref.display(), formatPlatform(node)))

	img, err := src.open()
	if err != nil {
		return nil, s.sourceError(ref, err)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, s.sourceError(ref, err)
	}
	if err := verifyBytes("manifest", d, rawManifest); err != nil {
		return nil, fmt.Errorf("image %q: %w", ref.display(), err)
	}
	manifest, err := v1.ParseManifest(bytes.NewReader(rawManifest))
	if err != nil {
		return nil, newKindError(ErrInvalid, err, "image %q: decode manifest %s", ref.display(), d)
	}
	if manifest.SchemaVersion != 2 {
		return nil, newKindError(ErrInvalid, nil, "image %q: manifest %s has schema version %d, want 2", ref.display(), d, manifest.SchemaVersion)
	}
	if mt := manifest.Config.MediaType; mt != "" && !mt.IsConfig() {
		return nil, notImageError(ref, mt)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, s.sourceError(ref, err)
	}
	if err := verifyBytes("config", manifest.Config.Digest, rawConfig); err != nil {
		return nil, fmt.Errorf("image %q: %w", ref.display(), err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, newKindError(ErrInvalid, err, "image %q: decode config %s", ref.display(), manifest.Config.Digest)
	}
	platform := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, OSVersion: cfg.OSVersion, OSFeatures: cfg.OSFeatures}
	if platform.OS != "" && !sameOSArch(platform, node) {
		return nil, wrongPlatformError(ref, platform, node)
	}
	if n := len(cfg.RootFS.DiffIDs); n != 0 && n != len(manifest.Layers) {
		return nil, newKindError(ErrInvalid, nil, "image %q: the manifest lists %d layers but the config %d diff_ids", ref.display(), len(manifest.Layers), n)
	}

	blobs := []v1.Hash{d, manifest.Config.Digest}
	for _, l := range manifest.Layers {
		blobs = append(blobs, l.Digest)
	}
	defer s.pinBlobs(blobs...)()
	if err := s.writeBlobBytes(ctx, d, rawManifest); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	if err := s.writeBlobBytes(ctx, manifest.Config.Digest, rawConfig); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}

	// Layers this pull pins stay pinned until the image is recorded (or
	// the pull failed), so that no removal takes them in between.
	var (
		heldMu sync.Mutex
		held   []func()
	)
	hold := func(f func()) {
		heldMu.Lock()
		held = append(held, f)
		heldMu.Unlock()
	}
	defer func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		for _, f := range held {
			f()
		}
	}()

	tmp, err := os.MkdirTemp(s.rootDir, tmpPrefix+d.Hex+"-")
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	done := false
	defer func() {
		if !done {
			if err := removeTree(tmp); err != nil {
				s.logger.Warn("cannot remove partial rootfs", "path", tmp, "error", err)
			}
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	a := newAssembler(tmp, s.logger.With("ref", ref.String(), "digest", d.String()))
	layers, reused, err := s.fetchAndUnpack(ctx, ref, img, manifest, cfg, a, hold, progress)
	if err != nil {
		return nil, err
	}
	var size int64
	diffIDs := make([]v1.Hash, 0, len(layers))
	for _, l := range layers {
		size += l.Size
		diffIDs = append(diffIDs, l.DiffID)
	}

	final := s.rootfsPath(d)
	if _, err := os.Lstat(final); err == nil {
		// Left by a build that failed after the rename; not complete
		// (no metadata), so replace it.
		if err := removeTree(final); err != nil {
			return nil, fmt.Errorf("pull %s: remove stale rootfs: %w", ref.display(), err)
		}
	}
	if err := renameDurably(tmp, final); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	done = true
	meta := &imageMeta{
		Ref:      ref.String(),
		Digest:   d,
		Platform: platform,
		Config:   cfg.Config,
		Size:     size,
		Blobs:    blobs,
		Layers:   diffIDs,
		Created:  time.Now().UTC(),
		rootfs:   final,
	}
	if err := writeMeta(s.metaPath(d), meta); err != nil {
		_ = removeTree(final)
		return nil, fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	s.mu.Lock()
	s.images[d] = meta
	s.mu.Unlock()

	if a.skippedXattrs > 0 {
		s.logger.Warn("extended attributes not set in the rootfs (not permitted or not supported)", "ref", ref.String(), "count", a.skippedXattrs)
	}
	elapsed := time.Since(start).Round(100 * time.Millisecond)
	s.logger.Info("image pulled", "ref", ref.String(), "digest", d, "platform", formatPlatform(platform),
		"layers", len(manifest.Layers), "layers_cached", reused, "size", size, "linked", a.linked, "copied", a.copied, "duration", elapsed)
	cached := ""
	if reused > 0 {
		cached = fmt.Sprintf(", %d already unpacked", reused)
	}
	progress(fmt.Sprintf("Unpacked %s (%d layers, %s%s) in %s", ref.display(), len(manifest.Layers), humanSize(size), cached, elapsed))
	return meta.image(ref.String()), nil
}

// sourceError classifies an error from reading the image source.
func (s *Store) sourceError(ref Ref, err error) error {
	if ref.IsLayout() {
		return layoutError(ref, err)
	}
	return registryError(ref, err)
}

func wrongPlatformError(ref Ref, image, node v1.Platform) error {
	return newKindError(ErrPlatform, nil, "image %q is built for %s but this node is %s; use an image (or a multi-platform index) with a %s variant",
		ref.display(), formatPlatform(image), formatPlatform(node), formatPlatform(node))
}

// pullContextError explains a pull that ended because its context did.
func pullContextError(ref Ref, opts PullOptions, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded) && opts.Timeout > 0:
		return fmt.Errorf("pull %s: timed out after %s (raise the image pull timeout or check the registry): %w", ref.display(), opts.Timeout, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	case errors.Is(err, errClosed):
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	return err
}
