package image

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxParallelDownloads bounds concurrent layer downloads of one pull.
const maxParallelDownloads = 3

// fetchAndUnpack makes sure every layer of the image is unpacked in the
// layer cache, downloading the blobs it needs a few at a time and unpacking
// each as soon as it is there, and assembles the layers in order into the
// rootfs of a as they become ready. Layers the cache has are neither
// downloaded nor unpacked again. It returns the layers, lowest first, and
// how many came from the cache. hold receives functions to run once the
// image is recorded (see prepareLayer).
func (s *Store) fetchAndUnpack(ctx context.Context, ref Ref, img v1.Image, manifest *v1.Manifest, cfg *v1.ConfigFile, a *assembler, hold func(func()), progress func(string)) ([]*layerMeta, int, error) {
	n := len(manifest.Layers)
	jobs := make([]layerJob, n)
	var total int64
	for i, l := range manifest.Layers {
		jobs[i] = layerJob{desc: l, ready: make(chan struct{})}
		if len(cfg.RootFS.DiffIDs) == n {
			if d := cfg.RootFS.DiffIDs[i]; d.Algorithm == "sha256" && isHex64(d.Hex) {
				jobs[i].diffID = d
			}
		}
		if !s.hasBlob(l.Digest) && (jobs[i].diffID.Hex == "" || !s.hasLayer(jobs[i].diffID)) {
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
				job := &jobs[i]
				fetch := func() error {
					return s.fetchLayer(dctx, ref, img, i, n, job.desc, &downloaded, progress)
				}
				job.err = s.prepareLayer(dctx, ref, i, n, job, fetch, hold)
				close(job.ready)
			}(i)
		}
	}()

	layers := make([]*layerMeta, 0, n)
	reused := 0
	for i := range jobs {
		select {
		case <-jobs[i].ready:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		if err := jobs[i].err; err != nil {
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			return nil, 0, err
		}
		m := jobs[i].meta
		if err := a.apply(ctx, i+1, layerFS(s.layerPath(m.DiffID)), m); err != nil {
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			return nil, 0, fmt.Errorf("pull %s: unpack %w", ref.display(), err)
		}
		layers = append(layers, m)
		if jobs[i].reused {
			reused++
		}
	}
	return layers, reused, nil
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
