package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"github.com/ferry-nomad/ferry/driver/runc"
	"lukechampine.com/blake3"
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

// Version is the manifest version this package writes and reads. Version
// 2 hashes files with BLAKE3, twice as fast as sha256 here, as each side of
// a move hashes every byte once.
const Version = 2

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
	// LazyPages: the task's anonymous memory is not in the images; the
	// source's CRIU serves it (CreateLazy), and the destination restores
	// with a lazy-pages daemon (StartLazyPages, runc.RestoreOptions).
	LazyPages bool `json:"lazy_pages,omitempty"`
	// LeaveRunning: the task ran on after the dump (a periodic
	// checkpoint, runc checkpoint --leave-running).
	LeaveRunning bool `json:"leave_running,omitempty"`
}

// File is one file of a checkpoint directory.
type File struct {
	// Path is relative to the checkpoint directory, with forward slashes,
	// e.g. "images/pages-1.img".
	Path string `json:"path"`
	// Size is in bytes.
	Size int64 `json:"size"`
	// Sum is the hex BLAKE3-256 of the contents (see NewFileHash).
	Sum string `json:"blake3"`
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
	// PackDuration is how long the rest took after the dump: reading and
	// hashing what CRIU wrote (and streaming it, with a Sink), packing the
	// rootfs and copying the spec.
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
		LazyPages:      m.Options.LazyPages,
	}
}

// ImagesDir returns the CRIU image directory of checkpoint dir, the
// shim's Config.ImagePath for a restore.
func ImagesDir(dir string) string {
	return filepath.Join(dir, ImagesName)
}

// FileHashName names the hash a manifest lists for each file.
const FileHashName = "blake3"

// fileHashSize is the size of a file's sum, in bytes.
const fileHashSize = 32

// NewFileHash returns the hash of a file's contents that a manifest lists
// (BLAKE3-256). Every file is hashed once on each node of a move, as it is
// written or received.
func NewFileHash() hash.Hash { return blake3.New(fileHashSize, nil) }

// FileSum is the sum NewFileHash gives data.
func FileSum(data []byte) string {
	h := NewFileHash()
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// Check compares what was read of f, size bytes hashed into h, with the
// manifest's entry: a *FileError when the size or the sum differs.
func (f File) Check(size int64, h hash.Hash) error {
	if size != f.Size {
		return &FileError{Path: f.Path, Problem: fmt.Sprintf("%d bytes, the manifest says %d (truncated or tampered)", size, f.Size)}
	}
	if hex.EncodeToString(h.Sum(nil)) != f.Sum {
		return &FileError{Path: f.Path, Problem: FileHashName + " mismatch (corrupt or tampered)"}
	}
	return nil
}

// MaxManifestSize bounds a manifest anyone reads, from disk or the network.
const MaxManifestSize = 16 << 20

// Digest returns the hex sha256 of a manifest as written: the value the
// catalogue records and a restoring node checks before parsing it.
func Digest(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// ParseManifest decodes a manifest and checks what every reader relies on:
// its version; every file listed once by a clean relative path inside the
// checkpoint, never the manifest itself; a BLAKE3 sum for each; sizes that add
// up to Bytes. It does not look at any file.
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("manifest larger than %d bytes", MaxManifestSize)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", ManifestName, err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("manifest version %d, this driver reads version %d", m.Version, Version)
	}
	listed := make(map[string]bool, len(m.Files))
	var total int64
	for i := range m.Files {
		f := &m.Files[i]
		if err := checkListedPath(f.Path); err != nil {
			return nil, err
		}
		if listed[f.Path] {
			return nil, &FileError{Path: f.Path, Problem: "listed twice in the manifest"}
		}
		listed[f.Path] = true
		if f.Size < 0 {
			return nil, &FileError{Path: f.Path, Problem: fmt.Sprintf("negative size %d in the manifest", f.Size)}
		}
		f.Sum = strings.ToLower(f.Sum)
		if b, err := hex.DecodeString(f.Sum); err != nil || len(b) != fileHashSize {
			return nil, &FileError{Path: f.Path, Problem: fmt.Sprintf("invalid %s sum %q in the manifest", FileHashName, f.Sum)}
		}
		total += f.Size
	}
	if total != m.Bytes {
		return nil, fmt.Errorf("manifest files add up to %d bytes, manifest says %d: %w", total, m.Bytes, ErrCorrupt)
	}
	return &m, nil
}

// maxPathLen bounds one file path of a manifest.
const maxPathLen = 4096

// checkListedPath refuses a manifest path that is not a clean relative
// path with "/" separators inside the checkpoint, or that names the
// manifest.
func checkListedPath(p string) error {
	if p == "" || len(p) > maxPathLen || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." ||
		strings.HasPrefix(p, "../") || strings.ContainsAny(p, "\\\x00") {
		return &FileError{Path: fmt.Sprintf("%q", p), Problem: "bad path in the manifest"}
	}
	if p == ManifestName {
		return &FileError{Path: p, Problem: "the manifest lists itself"}
	}
	return nil
}

// CheckPath refuses a path that a manifest could not list (see
// ParseManifest): what a receiver checks before it writes a file.
func CheckPath(p string) error { return checkListedPath(p) }

// allocID is the form of a Nomad allocation ID: a UUID.
var allocID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Dir returns the directory of the checkpoint of alloc's task under root,
// root/<alloc>/<task>: where the driver writes it, receives it into, serves
// it from and removes it. alloc must be a Nomad allocation ID (a UUID) and
// task a task name (one path element, as Nomad requires); anything else is
// refused, so that no ID, wherever it came from, names a path outside root.
func Dir(root, alloc, task string) (string, error) {
	if !allocID.MatchString(alloc) {
		return "", fmt.Errorf("checkpoint directory: %q is not an allocation ID", alloc)
	}
	if task == "" || task == "." || task == ".." || strings.ContainsAny(task, "/\\\x00") {
		return "", fmt.Errorf("checkpoint directory: %q is not a task name", task)
	}
	return filepath.Join(root, alloc, task), nil
}

// Find returns the directory of the checkpoint of alloc's task (see Dir)
// under the first of roots that holds a complete one, or under the first
// root when none does: a node keeps a checkpoint where it wrote it, or
// later where it moved it for keeping.
func Find(roots []string, alloc, task string) (string, error) {
	var first string
	for _, root := range roots {
		dir, err := Dir(root, alloc, task)
		if err != nil {
			return "", err
		}
		if first == "" {
			first = dir
		}
		if _, err := os.Stat(filepath.Join(dir, ManifestName)); err == nil {
			return dir, nil
		}
	}
	if first == "" {
		return "", errors.New("checkpoint directory: no root to look in")
	}
	return first, nil
}

// ReadManifest reads and parses dir's manifest without checking the files
// it lists (see Open). It wraps ErrNoManifest when there is none.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := ReadRaw(dir)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	return m, nil
}

// ReadRaw returns dir's manifest as written, unparsed. It wraps
// ErrNoManifest when there is none.
func ReadRaw(dir string) ([]byte, error) {
	p := filepath.Join(dir, ManifestName)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, ErrNoManifest)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: read manifest: %w", dir, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: read manifest: %w", dir, err)
	}
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("checkpoint %s: manifest larger than %d bytes", dir, MaxManifestSize)
	}
	return data, nil
}

// writeManifest writes m as dir's manifest, atomically for readers but not
// synced (see Sync), and returns what it wrote.
func writeManifest(dir string, m *Manifest) ([]byte, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", ManifestName, err)
	}
	data = append(data, '\n')
	if err := WriteManifest(dir, data); err != nil {
		return nil, err
	}
	return data, nil
}

// WriteManifest writes raw as dir's manifest, atomically for readers but
// not synced: the last step of writing, receiving or fetching a checkpoint.
func WriteManifest(dir string, raw []byte) error {
	if err := atomicfile.WriteUnsynced(filepath.Join(dir, ManifestName), raw, fileMode); err != nil {
		return fmt.Errorf("write %s: %w", ManifestName, err)
	}
	return nil
}
