package transfer

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
)

const (
	// TokenHeader carries the shared token on checkpoint requests.
	TokenHeader = "X-Ferry-Token"
	// ManifestName is the manifest's file name in a checkpoint directory.
	ManifestName = "manifest.json"
	// maxManifestSize bounds the manifest read by the server and by Fetch.
	maxManifestSize = 16 << 20
	// maxPathLen bounds one file path of a manifest.
	maxPathLen = 4096
)

// FileEntry is one file of a checkpoint, as its manifest lists it.
type FileEntry struct {
	// Path is relative to the checkpoint directory, with "/" separators.
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Mode   uint32 `json:"mode"`
}

// manifestFiles is the part of a manifest this package reads; other fields
// are ignored (and kept verbatim, since the manifest is copied as is).
type manifestFiles struct {
	Files []FileEntry `json:"files"`
}

// parseManifest returns the files a manifest lists, after checking every
// entry: a safe relative path, listed once, a size and a SHA-256.
func parseManifest(data []byte) ([]FileEntry, error) {
	var m manifestFiles
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	seen := make(map[string]bool, len(m.Files))
	for i := range m.Files {
		e := &m.Files[i]
		if err := checkRelPath(e.Path); err != nil {
			return nil, fmt.Errorf("manifest file %d: %w", i, err)
		}
		if e.Path == ManifestName {
			return nil, fmt.Errorf("manifest file %d: lists %s itself", i, ManifestName)
		}
		if seen[e.Path] {
			return nil, fmt.Errorf("manifest file %d: %s listed twice", i, e.Path)
		}
		seen[e.Path] = true
		if e.Size < 0 {
			return nil, fmt.Errorf("manifest file %s: negative size %d", e.Path, e.Size)
		}
		e.SHA256 = strings.ToLower(e.SHA256)
		if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("manifest file %s: invalid sha256 %q", e.Path, e.SHA256)
		}
	}
	return m.Files, nil
}

// checkRelPath accepts a clean relative path with "/" separators that stays
// inside its directory: no empty, "." or ".." element, no leading slash, no
// backslash or NUL.
func checkRelPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case len(p) > maxPathLen:
		return fmt.Errorf("path longer than %d bytes", maxPathLen)
	case strings.ContainsAny(p, "\\\x00"):
		return fmt.Errorf("invalid path %q: backslash or NUL", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("invalid path %q: absolute", p)
	}
	for elem := range strings.SplitSeq(p, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return fmt.Errorf("invalid path %q: empty, . or .. element", p)
		}
	}
	return nil
}

// checkName accepts a single path element usable as an allocation ID or a
// task name.
func checkName(what, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
		return fmt.Errorf("invalid %s %q", what, name)
	}
	return nil
}

// CheckpointDir returns the directory of the checkpoint of alloc's task under
// root: root/alloc/task. The driver writes checkpoints there and the Server
// serves them from the same root. alloc and task must be single path
// elements (Nomad allocation IDs and task names are).
func CheckpointDir(root, alloc, task string) string {
	return filepath.Join(root, alloc, task)
}
