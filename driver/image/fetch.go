package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxParallelDownloads bounds concurrent layer downloads of one pull.
const maxParallelDownloads = 3

type layerJob struct {
	desc  v1.Descriptor
	ready chan struct{}
	err   error
}

// fetchAndUnpack downloads the layers missing from the cache, a few at a
// time, and unpacks each into u as soon as it and all layers below it are
// available.
func (s *Store) fetchAndUnpack(ctx context.Context, ref Ref, img v1.Image, manifest *v1.Manifest, cfg *v1.ConfigFile, u *unpacker, progress func(string)) error {
	n := len(manifest.Layers)
	jobs := make([]layerJob, n)
	var total int64
	for i, l := range manifest.Layers {
		jobs[i] = layerJob{desc: l, ready: make(chan struct{})}
		if !s.hasBlob(l.Digest) {
			total += l.Size
		}
	}

	dctx, dcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		dcancel()
		wg.Wait()
	}()

	var downloaded atomic.Int64
	if total > 0 && s.progressInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.reportDownloads(dctx, ref, &downloaded, total, progress)
		}()
	}

	sem := make(chan struct{}, maxParallelDownloads)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range jobs {
			select {
			case sem <- struct{}{}:
			case <-dctx.Done():
				for j := i; j < n; j++ {
					jobs[j].err = dctx.Err()
					close(jobs[j].ready)
				}
				return
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				jobs[i].err = s.fetchLayer(dctx, ref, img, i, n, jobs[i].desc, &downloaded, progress)
				close(jobs[i].ready)
			}(i)
		}
	}()

	for i := range jobs {
		select {
		case <-jobs[i].ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := jobs[i].err; err != nil {
			return err
		}
		var diffID v1.Hash
		if len(cfg.RootFS.DiffIDs) == n {
			diffID = cfg.RootFS.DiffIDs[i]
		}
		if err := s.unpackLayer(ctx, ref, u, i, n, jobs[i].desc, diffID); err != nil {
			return err
		}
	}
	return nil
}

// fetchLayer downloads one layer into the blob cache unless it is there.
func (s *Store) fetchLayer(ctx context.Context, ref Ref, img v1.Image, i, n int, desc v1.Descriptor, downloaded *atomic.Int64, progress func(string)) error {
	if s.hasBlob(desc.Digest) {
		return nil
	}
	layer, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return s.sourceError(ref, err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return s.sourceError(ref, err)
	}
	defer rc.Close()
	if err := s.writeBlob(ctx, desc.Digest, desc.Size, rc, func(k int64) { downloaded.Add(k) }); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var kerr *kindError
		if errors.As(err, &kerr) {
			return fmt.Errorf("pull %s: layer %d/%d: %w", ref.display(), i+1, n, err)
		}
		return s.sourceError(ref, err)
	}
	s.blobFetches.Add(1)
	progress(fmt.Sprintf("Downloaded layer %d/%d %s %s", i+1, n, shortDigest(desc.Digest), humanSize(desc.Size)))
	return nil
}

// reportDownloads sends a progress line every progressInterval while bytes
// keep arriving.
func (s *Store) reportDownloads(ctx context.Context, ref Ref, downloaded *atomic.Int64, total int64, progress func(string)) {
	t := time.NewTicker(s.progressInterval)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cur := downloaded.Load()
			if cur == last || cur >= total {
				continue
			}
			last = cur
			progress(fmt.Sprintf("Downloading %s: %s of %s", ref.display(), humanSize(cur), humanSize(total)))
		}
	}
}

// unpackLayer applies a cached layer blob to the rootfs and checks its
// uncompressed digest against the config's diff_id.
func (s *Store) unpackLayer(ctx context.Context, ref Ref, u *unpacker, i, n int, desc v1.Descriptor, diffID v1.Hash) error {
	f, err := s.openBlob(desc.Digest)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	}
	defer f.Close()
	zr, err := decompress(f)
	if err != nil {
		return newKindError(ErrInvalid, err, "pull %s: layer %d/%d %s", ref.display(), i+1, n, desc.Digest)
	}
	defer zr.Close()
	h := sha256.New()
	r := io.TeeReader(zr, h)
	if err := u.apply(ctx, i+1, r); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pull %s: unpack %w", ref.display(), err)
	}
	// Drain the end of the archive so the digest covers the whole stream
	// (and gzip verifies its checksum).
	if _, err := io.Copy(io.Discard, r); err != nil {
		return newKindError(ErrInvalid, err, "pull %s: layer %d/%d %s", ref.display(), i+1, n, desc.Digest)
	}
	if diffID.Hex != "" && diffID.Algorithm == "sha256" {
		if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
			return newKindError(ErrInvalid, nil, "pull %s: layer %d/%d %s uncompresses to sha256:%s, but the config says %s (corrupt image)",
				ref.display(), i+1, n, desc.Digest, got, diffID)
		}
	}
	return nil
}
