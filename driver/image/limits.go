package image

import (
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

const (
	// DefaultMaxLayerSize is StoreConfig.MaxLayerSize's default: the most
	// one layer may unpack to, counting its uncompressed archive and the
	// files it writes each on their own.
	DefaultMaxLayerSize int64 = 8 << 30
	// DefaultMinFreeSpace is StoreConfig.MinFreeSpace's default: the space
	// unpacking leaves free on the image store's file system.
	DefaultMinFreeSpace int64 = 512 << 20

	// spaceCheckInterval is how many bytes of files a layer writes between
	// two checks of the free space.
	spaceCheckInterval = 64 << 20
)

// sizeLimitError reports a layer past the store's MaxLayerSize.
type sizeLimitError struct {
	limit int64
	// what went past it: the uncompressed archive or its files.
	what string
}

func (e *sizeLimitError) Error() string {
	return fmt.Sprintf("%s would exceed %s", e.what, humanSize(e.limit))
}

// noSpaceError reports a file system with too little free space for a
// layer.
type noSpaceError struct {
	dir              string
	free, need, keep int64
}

func (e *noSpaceError) Error() string {
	return fmt.Sprintf("the image store's file system (%s) has %s free, and unpacking needs %s more while leaving %s free",
		e.dir, humanSize(e.free), humanSize(e.need), humanSize(e.keep))
}

// limitError turns a sizeLimitError or noSpaceError in err into an error of
// kind ErrTooLarge or ErrNoSpace for layer i (0-based) of n that says what
// to change; it returns nil for any other error.
func limitError(err error, ref Ref, i, n int, desc v1.Descriptor) error {
	var tooLarge *sizeLimitError
	if errors.As(err, &tooLarge) {
		return newKindError(ErrTooLarge, nil,
			"pull %s: layer %d/%d %s: %s, the limit per layer (the plugin option images.max_layer_size, default %s); "+
				"the layer may be a decompression bomb: if the image is trusted, raise the limit",
			ref.display(), i+1, n, desc.Digest, tooLarge.Error(), humanSize(DefaultMaxLayerSize))
	}
	var noSpace *noSpaceError
	if errors.As(err, &noSpace) {
		return newKindError(ErrNoSpace, nil,
			"pull %s: layer %d/%d %s: %s (the plugin option images.min_free_space); free space on that file system, "+
				"remove unused images or move the image store to a larger one",
			ref.display(), i+1, n, desc.Digest, noSpace.Error())
	}
	return nil
}

// limitReader passes on at most limit bytes of r, and fails with a
// sizeLimitError past them.
type limitReader struct {
	r        io.Reader
	limit, n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n > l.limit {
		return 0, l.err()
	}
	// One byte past the limit is enough to know.
	if rest := l.limit + 1 - l.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.limit {
		return n, l.err()
	}
	return n, err
}

func (l *limitReader) err() error {
	return &sizeLimitError{limit: l.limit, what: "its uncompressed archive"}
}

// freeSpace returns the bytes that unprivileged writers may still use on
// the file system of dir: the root reserve stays for the node's own
// services.
func freeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// checkFreeSpace fails with a noSpaceError unless the layer directory's
// file system has need bytes free on top of the store's MinFreeSpace.
func (s *Store) checkFreeSpace(need int64) error {
	free, err := freeSpace(s.layerDir)
	if err != nil {
		return err
	}
	if free-need < s.minFreeSpace {
		return &noSpaceError{dir: s.dir, free: free, need: need, keep: s.minFreeSpace}
	}
	return nil
}
