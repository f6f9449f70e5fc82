// Package atomicfile writes files so that readers, and a crash, see either
// the old content or the new, never a part.
package atomicfile

import (
	"os"
	"path/filepath"
)

// TempPrefix starts the name of a file still being written, so that a
// directory's owner can recognise leftovers of an interrupted write.
const TempPrefix = ".tmp-"

// Write writes data to path through a synced temporary file in the same
// directory, renamed over path, and then syncs the directory.
func Write(path string, data []byte, perm os.FileMode) error {
	if err := write(path, data, perm, true); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteUnsynced writes data to path through a temporary file in the same
// directory, renamed over path: readers see the old content or the new,
// never a part, but nothing is synced, so after a crash path may be
// missing or empty until a later sync of its file system. It is for files
// on the critical path of a live move, which must not wait for the disk.
func WriteUnsynced(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, sync bool) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), TempPrefix+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(name)
		}
	}()
	if err = tmp.Chmod(perm); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if sync {
		if err = tmp.Sync(); err != nil {
			return err
		}
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(name, path)
}

// SyncDir makes the entries of dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
