package image

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/hashicorp/go-hclog"
)

// tmpPrefix starts the name of every entry that is still being written.
// Such entries are never read and are removed when a Store starts.
const tmpPrefix = atomicfile.TempPrefix

// defaultProgressInterval is how often a long download reports its progress.
const defaultProgressInterval = 10 * time.Second

// defaultPullGrace is the least time a freshly pulled image that no task has
// acquired yet stays on disk, so that a short (or zero) GC delay cannot
// remove it between Pull and Acquire.
const defaultPullGrace = time.Minute

// StoreConfig configures a Store.
type StoreConfig struct {
	// Dir holds the cache, e.g. /var/lib/ferry/images. It is created if
	// missing. One Store owns a Dir at a time.
	Dir string
	// GCEnabled removes images no task uses any more.
	GCEnabled bool
	// GCDelay is how long an image whose reference count dropped to zero
	// stays on disk before it is removed, unless it is acquired again. An
	// image pulled but not acquired is removed after GCDelay too, but no
	// sooner than a minute after the pull.
	GCDelay time.Duration
	// RecoverGrace is how long, after the store opens, the images already
	// on disk wait for the tasks still running to be recovered (which
	// acquires their images) before the unused ones are collected like any
	// other; default 5m, and never less than GCDelay.
	RecoverGrace time.Duration
	// MaxLayerSize is the most one layer may unpack to, in bytes: both its
	// uncompressed archive and the files it writes must stay within it,
	// so that a small compressed layer cannot fill the node's disk (a
	// decompression bomb). A pull with a larger layer fails with
	// ErrTooLarge. 0 means DefaultMaxLayerSize (8 GiB).
	MaxLayerSize int64
	// MinFreeSpace is the space, in bytes, that unpacking a layer leaves
	// free on the file system of Dir: a layer is not unpacked unless that
	// much is free on top of its compressed size, and the free space is
	// checked again as its files are written. A pull that would go below
	// it fails with ErrNoSpace. 0 means DefaultMinFreeSpace (512 MiB).
	MinFreeSpace int64
	// Logger receives the store's logs; nil discards them.
	Logger hclog.Logger
}

// Image is an unpacked image ready to be used as a task's root filesystem.
type Image struct {
	// Ref is the canonical reference the image was pulled by (Ref.String).
	Ref string
	// Digest is the digest of the platform-specific manifest (never the
	// index's).
	Digest v1.Hash
	// Platform is the platform recorded in the image config.
	Platform v1.Platform
	// Config holds Env, Entrypoint, Cmd, WorkingDir, User, ...
	Config v1.Config
	// RootFS is the absolute path of the flattened rootfs. It is shared by
	// every task using the image, and its files share their inodes with
	// the layer cache (and so with other images): it must never be
	// written to. Use it as the read-only lower directory of an overlay.
	RootFS string
	// Size is the unpacked size in bytes, roughly.
	Size int64
}

// clone returns a deep copy of img.
func (img *Image) clone() *Image {
	c := *img
	c.Config = *img.Config.DeepCopy()
	if p := img.Platform.DeepCopy(); p != nil {
		c.Platform = *p
	}
	return &c
}

// Store downloads, unpacks and caches images, and removes the ones no task
// uses any more. It is safe for concurrent use.
type Store struct {
	dir       string
	blobDir   string
	layerDir  string
	rootDir   string
	logger    hclog.Logger
	gcEnabled bool
	gcDelay   time.Duration

	// maxLayerSize and minFreeSpace are StoreConfig's, defaults applied.
	maxLayerSize int64
	minFreeSpace int64

	// progressInterval is how often downloads report progress; pullGrace
	// is the least delay before an unused image is removed after a pull;
	// transport carries registry requests. Tests in this package change
	// them.
	progressInterval time.Duration
	pullGrace        time.Duration
	transport        http.RoundTripper

	// ctx is cancelled by Close and stops pulls in flight.
	ctx    context.Context
	cancel context.CancelFunc

	// resolvedMu serialises writes of resolved.json.
	resolvedMu sync.Mutex

	mu       sync.Mutex
	closed   bool
	images   map[v1.Hash]*imageMeta    // complete images on disk
	resolved map[string]v1.Hash        // resolveKey -> manifest digest
	refs     map[v1.Hash]int           // tasks using an image
	timers   map[v1.Hash]*removalTimer // pending removals
	pins     map[v1.Hash]*pin          // pulls using a manifest digest
	blobPins map[v1.Hash]int           // blobs pulls in progress rely on
	// layerPins holds the layers (by diff ID) pulls in progress rely on;
	// a pin's lock is held while its layer is unpacked.
	layerPins map[v1.Hash]*pin
	removing  map[v1.Hash]chan struct{}
	flights   map[string]*flight

	// blobFetches counts blobs downloaded (not found in the cache).
	blobFetches atomic.Int64
	// layerUnpacks counts layers unpacked into the layer cache.
	layerUnpacks atomic.Int64
}

// defaultRecoverGrace is StoreConfig.RecoverGrace's default.
const defaultRecoverGrace = 5 * time.Minute

// NewStore opens (creating if needed) the image cache in cfg.Dir, removes
// entries left incomplete by a crash, and loads the images already there so
// that Lookup finds them.
func NewStore(cfg StoreConfig) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("image store: dir is empty; set the directory that holds the image cache")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("image store: dir %q: %w", cfg.Dir, err)
	}
	if cfg.GCDelay < 0 {
		return nil, fmt.Errorf("image store: gc delay %s is negative; use 0 or a positive duration", cfg.GCDelay)
	}
	if cfg.MaxLayerSize < 0 {
		return nil, fmt.Errorf("image store: max layer size %d is negative; use 0 for the default (%s) or a positive number of bytes",
			cfg.MaxLayerSize, humanSize(DefaultMaxLayerSize))
	}
	if cfg.MinFreeSpace < 0 {
		return nil, fmt.Errorf("image store: min free space %d is negative; use 0 for the default (%s) or a positive number of bytes",
			cfg.MinFreeSpace, humanSize(DefaultMinFreeSpace))
	}
	maxLayerSize, minFreeSpace := cfg.MaxLayerSize, cfg.MinFreeSpace
	if maxLayerSize == 0 {
		maxLayerSize = DefaultMaxLayerSize
	}
	if minFreeSpace == 0 {
		minFreeSpace = DefaultMinFreeSpace
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		dir:              dir,
		blobDir:          filepath.Join(dir, "blobs", "sha256"),
		layerDir:         filepath.Join(dir, "layers", "sha256"),
		rootDir:          filepath.Join(dir, "rootfs", "sha256"),
		logger:           logger,
		gcEnabled:        cfg.GCEnabled,
		gcDelay:          cfg.GCDelay,
		maxLayerSize:     maxLayerSize,
		minFreeSpace:     minFreeSpace,
		progressInterval: defaultProgressInterval,
		pullGrace:        defaultPullGrace,
		transport:        remote.DefaultTransport,
		ctx:              ctx,
		cancel:           cancel,
		images:           map[v1.Hash]*imageMeta{},
		resolved:         map[string]v1.Hash{},
		refs:             map[v1.Hash]int{},
		timers:           map[v1.Hash]*removalTimer{},
		pins:             map[v1.Hash]*pin{},
		blobPins:         map[v1.Hash]int{},
		layerPins:        map[v1.Hash]*pin{},
		removing:         map[v1.Hash]chan struct{}{},
		flights:          map[string]*flight{},
	}
	// The cache root only needs to be traversable by others: the overlay
	// lower directories live below it. Layers are reached through the
	// rootfs directories only.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o711},
		{filepath.Dir(s.blobDir), 0o700}, {s.blobDir, 0o700},
		{filepath.Dir(s.layerDir), 0o700}, {s.layerDir, 0o700},
		{filepath.Dir(s.rootDir), 0o711}, {s.rootDir, 0o711},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			cancel()
			return nil, fmt.Errorf("image store: create %s: %w", d.path, err)
		}
	}
	if err := s.load(); err != nil {
		cancel()
		return nil, err
	}
	grace := cfg.RecoverGrace
	if grace <= 0 {
		grace = defaultRecoverGrace
	}
	s.mu.Lock()
	for d := range s.images {
		s.scheduleRemovalLocked(d, max(grace, s.gcDelay))
	}
	s.mu.Unlock()
	s.logger.Debug("image store opened", "dir", dir, "images", len(s.images), "gc_enabled", s.gcEnabled, "gc_delay", s.gcDelay)
	return s, nil
}

// load removes leftovers of interrupted writes and reads the metadata of the
// complete images.
func (s *Store) load() error {
	if err := removeTemps(s.dir); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := removeTemps(s.blobDir); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := removeTemps(s.rootDir); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := s.loadLayers(); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	entries, err := os.ReadDir(s.rootDir)
	if err != nil {
		return fmt.Errorf("image store: read %s: %w", s.rootDir, err)
	}
	dirs := map[string]bool{}
	metas := map[string]bool{}
	for _, e := range entries {
		n := e.Name()
		switch {
		case e.IsDir() && isHex64(n):
			dirs[n] = true
		case strings.HasSuffix(n, metaSuffix) && isHex64(strings.TrimSuffix(n, metaSuffix)):
			metas[strings.TrimSuffix(n, metaSuffix)] = true
		}
	}
	for hex := range metas {
		path := filepath.Join(s.rootDir, hex+metaSuffix)
		if !dirs[hex] {
			s.logger.Warn("removing image metadata without rootfs", "path", path)
			_ = os.Remove(path)
			continue
		}
		meta, err := readMeta(path)
		if err != nil || meta.Digest.Hex != hex {
			s.logger.Warn("removing unreadable image metadata", "path", path, "error", err)
			_ = os.Remove(path)
			continue
		}
		meta.rootfs = filepath.Join(s.rootDir, hex)
		s.images[meta.Digest] = meta
	}
	for hex := range dirs {
		if _, ok := s.images[v1.Hash{Algorithm: "sha256", Hex: hex}]; ok {
			continue
		}
		path := filepath.Join(s.rootDir, hex)
		s.logger.Warn("removing incomplete rootfs", "path", path)
		if err := removeTree(path); err != nil {
			return fmt.Errorf("image store: remove incomplete rootfs %s: %w", path, err)
		}
	}
	s.loadResolved()
	return nil
}

// removeTemps deletes the entries of dir that are still being written.
func removeTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove leftover %s: %w", filepath.Join(dir, e.Name()), err)
			}
		}
	}
	return nil
}

// renameDurably renames tmp, a complete directory tree, to final. The tree
// is made durable first, so that a crash never leaves final with missing or
// truncated files, and the rename after.
func renameDurably(tmp, final string) error {
	if err := syncFS(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(final))
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Lookup returns a cached image by manifest digest, e.g. to recover a task
// after the driver restarted (call Acquire next).
func (s *Store) Lookup(digest v1.Hash) (*Image, bool) {
	s.mu.Lock()
	meta, ok := s.images[digest]
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	if fi, err := os.Stat(meta.rootfs); err != nil || !fi.IsDir() {
		return nil, false
	}
	return meta.image(meta.Ref), true
}

// Close stops pending removals and pulls in flight. Images stay on disk.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for d, rt := range s.timers {
		rt.t.Stop()
		delete(s.timers, d)
	}
	s.cancel()
}

func (s *Store) rootfsPath(d v1.Hash) string { return filepath.Join(s.rootDir, d.Hex) }
func (s *Store) metaPath(d v1.Hash) string   { return filepath.Join(s.rootDir, d.Hex+metaSuffix) }
func (s *Store) blobPath(d v1.Hash) string   { return filepath.Join(s.blobDir, d.Hex) }
