package image

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// metaSuffix names the metadata file next to a rootfs directory.
const metaSuffix = ".json"

// resolvedFile maps reference+platform to a manifest digest, so that cached
// tags and index digests need no registry round trip.
const resolvedFile = "resolved.json"

// imageMeta is the metadata written next to a finished rootfs. Its presence
// marks the image as complete.
type imageMeta struct {
	Ref      string      `json:"ref"`
	Digest   v1.Hash     `json:"digest"`
	Platform v1.Platform `json:"platform"`
	Config   v1.Config   `json:"config"`
	Size     int64       `json:"size"`
	// Blobs lists the manifest, config and layer blobs of the image so
	// that removal can tell which blobs are still referenced.
	Blobs []v1.Hash `json:"blobs"`
	// Layers lists the diff IDs of the unpacked layers the rootfs was
	// assembled from, lowest first, so that removal can tell which
	// layers are still needed.
	Layers  []v1.Hash `json:"layers,omitempty"`
	Created time.Time `json:"created"`

	rootfs string
}

// image returns a copy the caller may modify without touching the cache.
func (m *imageMeta) image(ref string) *Image {
	img := &Image{
		Ref:      ref,
		Digest:   m.Digest,
		Platform: m.Platform,
		Config:   m.Config,
		RootFS:   m.rootfs,
		Size:     m.Size,
	}
	return img.clone()
}

func readMeta(path string) (*imageMeta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m imageMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return &m, nil
}

func writeMeta(path string, m *imageMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image metadata: %w", err)
	}
	return writeFile(path, b, 0o644)
}

// resolveKey identifies a resolution: the same reference can select
// different manifests on different platforms.
func resolveKey(ref Ref, platform v1.Platform) string {
	return ref.String() + " " + formatPlatform(platform)
}

// loadResolved reads resolved.json, keeping only entries whose image is
// still on disk. A missing or unreadable file only costs registry round
// trips.
func (s *Store) loadResolved() {
	path := filepath.Join(s.dir, resolvedFile)
	b, err := os.ReadFile(path)
	if err != nil {
		if !os.IsNotExist(err) {
			s.logger.Warn("cannot read resolved references; tags will be resolved again", "path", path, "error", err)
		}
		return
	}
	var m map[string]v1.Hash
	if err := json.Unmarshal(b, &m); err != nil {
		s.logger.Warn("cannot decode resolved references; tags will be resolved again", "path", path, "error", err)
		return
	}
	for k, d := range m {
		if _, ok := s.images[d]; ok {
			s.resolved[k] = d
		}
	}
}

// lookupResolved returns the manifest digest a reference resolved to before,
// if that image is still complete on disk.
func (s *Store) lookupResolved(key string) (v1.Hash, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.resolved[key]
	if !ok {
		return v1.Hash{}, false
	}
	_, ok = s.images[d]
	return d, ok
}

// recordResolution remembers that key resolved to d and persists the table.
func (s *Store) recordResolution(key string, d v1.Hash) {
	s.mu.Lock()
	old, had := s.resolved[key]
	s.resolved[key] = d
	s.mu.Unlock()
	if had && old == d {
		return
	}
	s.persistResolved()
}

// persistResolved writes the resolution table. Writers are serialised and
// each writes the table as it is when it holds the file lock, so the file
// never goes back to an older state.
func (s *Store) persistResolved() {
	s.resolvedMu.Lock()
	defer s.resolvedMu.Unlock()
	s.mu.Lock()
	b, err := json.MarshalIndent(s.resolved, "", "  ")
	s.mu.Unlock()
	if err != nil {
		s.logger.Warn("cannot encode resolved references", "error", err)
		return
	}
	path := filepath.Join(s.dir, resolvedFile)
	if err := writeFile(path, b, 0o600); err != nil {
		s.logger.Warn("cannot save resolved references", "path", path, "error", err)
	}
}

// writeFile writes a cache entry atomically; an interrupted write leaves a
// file starting with tmpPrefix, which the store removes when it opens.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
