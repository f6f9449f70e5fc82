package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrCorrupt is wrapped by the errors of Verify that find a checkpoint's
// contents differ from its manifest.
var ErrCorrupt = errors.New("checkpoint corrupt")

// FileError says what is wrong with one file of a checkpoint.
type FileError struct {
	// Path is relative to the checkpoint directory.
	Path string
	// Problem is e.g. "sha256 mismatch (corrupt or tampered)".
	Problem string
}

func (e *FileError) Error() string {
	return fmt.Sprintf("checkpoint file %s: %s; refusing to restore", e.Path, e.Problem)
}

// Unwrap makes a FileError match ErrCorrupt.
func (e *FileError) Unwrap() error { return ErrCorrupt }

// Verify reads dir's manifest and checks it against the directory: every
// listed file must be a regular file of the listed size and sha256, the
// manifest must list the CRIU images, the rootfs tar and the spec, and no
// file may be under images/ that the manifest does not list. It returns
// the manifest when all is well.
func Verify(dir string) (*Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	listed := make(map[string]bool, len(m.Files))
	var total int64
	for _, f := range m.Files {
		if err := checkListedPath(f.Path); err != nil {
			return nil, err
		}
		if listed[f.Path] {
			return nil, &FileError{Path: f.Path, Problem: "listed twice in the manifest"}
		}
		listed[f.Path] = true
		total += f.Size
	}
	if total != m.Bytes {
		return nil, fmt.Errorf("checkpoint %s: manifest files add up to %d bytes, manifest says %d: %w",
			dir, total, m.Bytes, ErrCorrupt)
	}
	for _, required := range []string{ImagesName + "/inventory.img", RootfsName, SpecName} {
		if !listed[required] {
			return nil, &FileError{Path: required, Problem: "not listed in the manifest"}
		}
	}
	if err := checkUnlisted(dir, listed); err != nil {
		return nil, err
	}
	for _, f := range m.Files {
		if err := checkFile(dir, f); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// checkListedPath refuses a manifest path that is not a clean relative
// path inside the checkpoint, or that names the manifest.
func checkListedPath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") ||
		strings.ContainsRune(p, 0) {
		return &FileError{Path: fmt.Sprintf("%q", p), Problem: "bad path in the manifest"}
	}
	if p == ManifestName {
		return &FileError{Path: p, Problem: "the manifest lists itself"}
	}
	return nil
}

// checkUnlisted fails on any entry under images/ that is neither a
// directory nor a listed file.
func checkUnlisted(dir string, listed map[string]bool) error {
	images := filepath.Join(dir, ImagesName)
	return filepath.WalkDir(images, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !listed[rel] {
			return &FileError{Path: rel, Problem: "not listed in the manifest (extra file)"}
		}
		return nil
	})
}

// checkFile checks one listed file's type, size and sha256.
func checkFile(dir string, f File) error {
	p := filepath.Join(dir, filepath.FromSlash(f.Path))
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return &FileError{Path: f.Path, Problem: "missing"}
	}
	if err != nil {
		return fmt.Errorf("checkpoint file %s: %w", f.Path, err)
	}
	if !fi.Mode().IsRegular() {
		return &FileError{Path: f.Path, Problem: "not a regular file"}
	}
	if fi.Size() != f.Size {
		return &FileError{Path: f.Path, Problem: fmt.Sprintf(
			"size %d, manifest says %d (truncated or tampered)", fi.Size(), f.Size)}
	}
	size, sum, err := hashFile(p)
	if err != nil {
		return fmt.Errorf("checkpoint file %s: %w", f.Path, err)
	}
	if size != f.Size {
		return &FileError{Path: f.Path, Problem: fmt.Sprintf(
			"size %d, manifest says %d (changed while verifying)", size, f.Size)}
	}
	if sum != f.SHA256 {
		return &FileError{Path: f.Path, Problem: "sha256 mismatch (corrupt or tampered)"}
	}
	return nil
}
