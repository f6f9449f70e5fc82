package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
)

// Names inside a checkpoint directory.
const (
	// ManifestName is the manifest file; written last.
	ManifestName = "manifest.json"
	// ImagesName is the directory of CRIU images.
	ImagesName = "images"
	// RootfsName is the tar of the task's overlay upper directory.
	RootfsName = "rootfs.tar"
	// SpecName is the task's runtime spec at dump time.
	SpecName = "config.json"
	// workName is CRIU's work directory during the dump; removed after.
	workName = "work"
)

// Version is the manifest version this package writes and reads.
const Version = 1

// ErrNoManifest is returned (wrapped) when a directory has no manifest:
// it is not a checkpoint, or an incomplete one.
var ErrNoManifest = errors.New("no checkpoint manifest (incomplete or not a checkpoint)")

// Options are how a checkpoint was dumped; a restore must match them.
type Options struct {
	// TCPEstablished keeps established TCP connections; restoring them
	// needs the same network namespace configuration on the destination
	// (or closing them there, see Manifest.RestoreOptions).
	TCPEstablished bool `json:"tcp_established"`
	// FileLocks dumps file locks.
	FileLocks bool `json:"file_locks"`
}

// File is one file of a checkpoint directory.
type File struct {
	// Path is relative to the checkpoint directory, with forward slashes,
	// e.g. "images/pages-1.img".
	Path string `json:"path"`
	// Size is in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex sha256 of the contents.
	SHA256 string `json:"sha256"`
	// Mode is the file's permission bits, e.g. 0600 (384).
	Mode uint32 `json:"mode"`
}

// Meta is what the caller knows about the task being checkpointed; it is
// copied into the manifest.
type Meta struct {
	AllocID     string
	Task        string
	NodeID      string
	NodeName    string
	ImageRef    string
	ImageDigest string
	// Platform is the image's platform, e.g. "linux/amd64".
	Platform string
	// RuncVersion and CriuVersion are filled in by Create when empty.
	RuncVersion string
	CriuVersion string
}

// Manifest describes a checkpoint. In JSON the durations are integer
// milliseconds: dump_duration_ms and pack_duration_ms.
type Manifest struct {
	Version     int    `json:"version"`
	ContainerID string `json:"container_id"`
	AllocID     string `json:"alloc_id"`
	Task        string `json:"task"`
	NodeID      string `json:"node_id"`
	NodeName    string `json:"node_name"`
	ImageRef    string `json:"image_ref"`
	ImageDigest string `json:"image_digest"`
	// Platform is e.g. "linux/amd64".
	Platform    string    `json:"platform"`
	RuncVersion string    `json:"runc_version"`
	CriuVersion string    `json:"criu_version"`
	Options     Options   `json:"options"`
	CreatedAt   time.Time `json:"created_at"`
	// DumpDuration is how long `runc checkpoint` took: the task was
	// frozen for about that long.
	DumpDuration time.Duration `json:"-"`
	// PackDuration is how long packing the rootfs, copying the spec and
	// hashing every file took.
	PackDuration time.Duration `json:"-"`
	// Files are every file under the checkpoint directory but the
	// manifest, sorted by path.
	Files []File `json:"files"`
	// Bytes is the sum of the sizes of Files.
	Bytes int64 `json:"bytes"`
}

// manifestAlias has Manifest's fields without its JSON methods.
type manifestAlias Manifest

type manifestJSON struct {
	*manifestAlias
	DumpMillis int64 `json:"dump_duration_ms"`
	PackMillis int64 `json:"pack_duration_ms"`
}

// MarshalJSON writes the durations as integer milliseconds.
func (m *Manifest) MarshalJSON() ([]byte, error) {
	return json.Marshal(manifestJSON{
		manifestAlias: (*manifestAlias)(m),
		DumpMillis:    m.DumpDuration.Milliseconds(),
		PackMillis:    m.PackDuration.Milliseconds(),
	})
}

// UnmarshalJSON reads the durations from integer milliseconds.
func (m *Manifest) UnmarshalJSON(data []byte) error {
	aux := manifestJSON{manifestAlias: (*manifestAlias)(m)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	m.DumpDuration = time.Duration(aux.DumpMillis) * time.Millisecond
	m.PackDuration = time.Duration(aux.PackMillis) * time.Millisecond
	return nil
}

// RestoreOptions returns the runc restore options matching how the
// checkpoint was dumped. With closeTCP, dumped TCP connections are
// restored closed rather than re-established, for a destination whose
// network differs from the source's.
func (m *Manifest) RestoreOptions(closeTCP bool) runc.RestoreOptions {
	return runc.RestoreOptions{
		TCPEstablished: m.Options.TCPEstablished && !closeTCP,
		TCPClose:       m.Options.TCPEstablished && closeTCP,
		FileLocks:      m.Options.FileLocks,
	}
}

// ImagesDir returns the CRIU image directory of checkpoint dir, the
// shim's Config.ImagePath for a restore.
func ImagesDir(dir string) string {
	return filepath.Join(dir, ImagesName)
}

// ReadManifest reads dir's manifest without checking the files it lists
// (see Verify). It wraps ErrNoManifest when there is none.
func ReadManifest(dir string) (*Manifest, error) {
	p := filepath.Join(dir, ManifestName)
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, ErrNoManifest)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: read manifest: %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("checkpoint %s: decode %s: %w", dir, ManifestName, err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("checkpoint %s: manifest version %d, this driver reads version %d",
			dir, m.Version, Version)
	}
	return &m, nil
}

// writeManifest writes m as dir's manifest, atomically.
func writeManifest(dir string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", ManifestName, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, ManifestName), append(data, '\n'), fileMode); err != nil {
		return fmt.Errorf("write %s: %w", ManifestName, err)
	}
	return nil
}
