package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrCorrupt is wrapped by the errors of Open that find a checkpoint's
// contents differ from its manifest.
var ErrCorrupt = errors.New("checkpoint corrupt")

// FileError says what is wrong with one file of a checkpoint.
type FileError struct {
	// Path is relative to the checkpoint directory.
	Path string
	// Problem is e.g. "blake3 mismatch (corrupt or tampered)".
	Problem string
}

func (e *FileError) Error() string {
	return fmt.Sprintf("checkpoint file %s: %s; refusing to restore", e.Path, e.Problem)
}

// Unwrap makes a FileError match ErrCorrupt.
func (e *FileError) Unwrap() error { return ErrCorrupt }

// Open returns the manifest of checkpoint dir once it is fit to restore: the
// manifest as written must have the sha256 digest (hex) the catalogue
// recorded, checked before it is parsed; then it is parsed and checked
// against the directory (check). With hash every file is read and hashed
// too: for a checkpoint this node did not hash as it wrote or received it,
// such as one on shared storage.
func Open(dir, digest string, hash bool) (*Manifest, error) {
	raw, err := ReadRaw(dir)
	if err != nil {
		return nil, err
	}
	if got := Digest(raw); digest == "" || got != digest {
		return nil, fmt.Errorf("checkpoint %s: manifest sha256 %s, the record says %q; refusing the checkpoint: %w", dir, got, digest, ErrCorrupt)
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	if err := check(dir, m); err != nil {
		return nil, err
	}
	if hash {
		for _, f := range m.Files {
			if err := checkFile(dir, f, true); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// check checks dir against its manifest m without reading the files: m
// must list the CRIU images, the rootfs tar and the spec; every listed
// file must be a regular file of its listed size; nothing unlisted may be
// under images/. It is all a node checks of a checkpoint whose files it
// hashed as they were written or received.
func check(dir string, m *Manifest) error {
	listed := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		listed[f.Path] = true
	}
	for _, required := range []string{ImagesName + "/inventory.img", RootfsName, SpecName} {
		if !listed[required] {
			return &FileError{Path: required, Problem: "not listed in the manifest"}
		}
	}
	if err := checkUnlisted(dir, listed); err != nil {
		return err
	}
	for _, f := range m.Files {
		if err := checkFile(dir, f, false); err != nil {
			return err
		}
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

// checkFile checks one listed file's type and size, and with hash its
// sum.
func checkFile(dir string, f File, hash bool) error {
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
	if !hash {
		return nil
	}
	size, h, err := hashFile(p)
	if err != nil {
		return fmt.Errorf("checkpoint file %s: %w", f.Path, err)
	}
	return f.Check(size, h)
}
