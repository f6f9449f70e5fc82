package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// hasBlob reports whether a blob is in the cache. Blobs only ever appear
// under their final name once complete and verified.
func (s *Store) hasBlob(d v1.Hash) bool {
	fi, err := os.Stat(s.blobPath(d))
	return err == nil && fi.Mode().IsRegular()
}

// writeBlob copies r into the cache as blob d. The data is hashed while it
// is written to a temporary file; only if the digest (and size, when known)
// match is the file renamed into place, so a truncated or corrupt download
// never lands in the cache. counted receives the number of bytes copied as
// the copy progresses.
func (s *Store) writeBlob(ctx context.Context, d v1.Hash, size int64, r io.Reader, counted func(int64)) error {
	if d.Algorithm != "sha256" {
		return newKindError(ErrInvalid, nil, "blob %s uses digest algorithm %q; only sha256 is supported", d, d.Algorithm)
	}
	f, err := os.CreateTemp(s.blobDir, tmpPrefix+d.Hex+"-*")
	if err != nil {
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	n, err := io.CopyBuffer(w, &ctxReader{ctx: ctx, r: r, counted: counted}, make([]byte, 256<<10))
	if err != nil {
		return fmt.Errorf("download blob %s: %w", d, err)
	}
	if size > 0 && n != size {
		return newKindError(ErrInvalid, nil, "blob %s is %d bytes, expected %d (truncated or corrupt download)", d, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return newKindError(ErrInvalid, nil, "blob %s has digest sha256:%s (corrupt download or source)", d, got)
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	if err := os.Rename(tmp, s.blobPath(d)); err != nil {
		return fmt.Errorf("store blob %s: %w", d, err)
	}
	ok = true
	return nil
}

// writeBlobBytes stores a small blob (manifest, config) held in memory.
func (s *Store) writeBlobBytes(ctx context.Context, d v1.Hash, b []byte) error {
	if s.hasBlob(d) {
		return nil
	}
	return s.writeBlob(ctx, d, int64(len(b)), bytes.NewReader(b), nil)
}

// verifyBytes checks in-memory content against its digest.
func verifyBytes(what string, d v1.Hash, b []byte) error {
	if d.Algorithm != "sha256" {
		return newKindError(ErrInvalid, nil, "%s %s uses digest algorithm %q; only sha256 is supported", what, d, d.Algorithm)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != d.Hex {
		return newKindError(ErrInvalid, nil, "%s %s has digest sha256:%s (corrupt source)", what, d, got)
	}
	return nil
}

// ctxReader stops a copy when ctx ends, for sources (files in an OCI layout)
// that do not watch a context themselves, and reports progress.
type ctxReader struct {
	ctx     context.Context
	r       io.Reader
	counted func(int64)
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if n > 0 && c.counted != nil {
		c.counted(int64(n))
	}
	return n, err
}

// openBlob opens a cached blob for reading.
func (s *Store) openBlob(d v1.Hash) (*os.File, error) {
	f, err := os.Open(filepath.Join(s.blobDir, d.Hex))
	if err != nil {
		return nil, fmt.Errorf("open cached blob %s: %w", d, err)
	}
	return f, nil
}
