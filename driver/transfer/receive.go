package transfer

import (
	"fmt"
	"hash"
	"os"
	"path"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
)

// receiver writes the files of a pushed checkpoint under root, each hashed
// as it arrives, and checks them against the manifest at the end.
type receiver struct {
	root  *os.Root
	files map[string]*received
	bytes int64
}

type received struct {
	f    *os.File
	size int64
	hash hash.Hash
}

func newReceiver(root *os.Root) *receiver {
	return &receiver{root: root, files: make(map[string]*received)}
}

// write stores data, the payload of file frame f.
func (rc *receiver) write(f frame, data []byte) error {
	st := rc.files[f.path]
	if st == nil {
		if f.offset != 0 {
			return fmt.Errorf("%s: first frame at offset %d", f.path, f.offset)
		}
		if dir := path.Dir(f.path); dir != "." {
			if err := rc.root.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("%s: %w", f.path, err)
			}
		}
		file, err := rc.root.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
		st = &received{f: file, hash: checkpoint.NewFileHash()}
		rc.files[f.path] = st
	}
	if f.offset != st.size {
		return fmt.Errorf("%s: frame at offset %d, %d bytes received so far", f.path, f.offset, st.size)
	}
	if _, err := st.f.Write(data); err != nil {
		return fmt.Errorf("%s: write: %w", f.path, err)
	}
	st.hash.Write(data)
	st.size += int64(len(data))
	rc.bytes += int64(len(data))
	return nil
}

// verify checks what was received against m: every listed file, with its
// size and sum, and nothing else.
func (rc *receiver) verify(m *checkpoint.Manifest) error {
	listed := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		listed[f.Path] = true
		st := rc.files[f.Path]
		if st == nil {
			return &checkpoint.FileError{Path: f.Path, Problem: "listed in the manifest but not received"}
		}
		if err := f.Check(st.size, st.hash); err != nil {
			return err
		}
	}
	for p := range rc.files {
		if !listed[p] {
			return &checkpoint.FileError{Path: p, Problem: "received but not listed in the manifest"}
		}
	}
	return nil
}

// close closes the files being written.
func (rc *receiver) close() error {
	var first error
	for _, st := range rc.files {
		if err := st.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
