package checkpoint

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"golang.org/x/sys/unix"
)

// Modes of what a checkpoint directory holds.
const (
	dirMode  os.FileMode = 0o700
	fileMode os.FileMode = 0o600
)

// syncFS flushes the whole filesystem holding dir: one call instead of a
// sync of every CRIU image.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// copyFile copies the regular file src to dst, which must not exist, with
// mode perm.
func copyFile(src, dst string, perm os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = out.Close()
			_ = os.Remove(dst)
		}
	}()
	if err = out.Chmod(perm); err != nil {
		return err
	}
	if _, err = io.Copy(out, in); err != nil {
		return err
	}
	return out.Close()
}

// hashFile returns the size of the file at path, and its contents hashed
// with NewFileHash.
func hashFile(path string) (int64, hash.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	h := NewFileHash()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, nil, err
	}
	return n, h, nil
}

// Move moves checkpoint src to dst, which must not exist, so that readers
// of either see a whole checkpoint or none: on one file system it renames
// it; across file systems it copies every file, syncs the copy, writes the
// manifest last and then removes src. It is how a checkpoint written to
// memory for a move is kept on disk when the move did not take it.
func Move(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), dirMode); err != nil {
		return fmt.Errorf("move checkpoint: %w", err)
	}
	err := os.Rename(src, dst)
	if err == nil || !errors.Is(err, unix.EXDEV) {
		if err != nil {
			return fmt.Errorf("move checkpoint: %w", err)
		}
		return nil
	}
	if err := copyTo(src, dst, false); err != nil {
		return fmt.Errorf("move checkpoint to %s: %w", dst, err)
	}
	return Remove(src)
}

// Copy copies the complete checkpoint src to dst, which must not exist,
// so that readers of dst see a whole checkpoint or none: every file the
// manifest lists is copied, the copy synced, read back and checked against
// the manifest, and the manifest written (and synced) last. It is how a
// periodic checkpoint leaves its node for the shared checkpoint_dir. A
// copy that fails is removed.
func Copy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), dirMode); err != nil {
		return fmt.Errorf("copy checkpoint: %w", err)
	}
	if err := copyTo(src, dst, true); err != nil {
		return fmt.Errorf("copy checkpoint to %s: %w", dst, err)
	}
	return nil
}

// copyTo copies checkpoint src to the new directory dst, syncs the copy,
// checks it against the manifest when verify is set, and writes the
// manifest last; it removes dst when it fails.
func copyTo(src, dst string, verify bool) (err error) {
	raw, err := ReadRaw(src)
	if err != nil {
		return err
	}
	m, err := ParseManifest(raw)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", src, err)
	}
	if err := os.Mkdir(dst, dirMode); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dst)
		}
	}()
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." || rel == ManifestName {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.Mkdir(target, dirMode)
		}
		return copyFile(p, target, fileMode)
	})
	if err != nil {
		return err
	}
	if err := syncFS(dst); err != nil {
		return err
	}
	if verify {
		if err := check(dst, m); err != nil {
			return err
		}
		for _, f := range m.Files {
			if err := checkFile(dst, f, true); err != nil {
				return err
			}
		}
	}
	return atomicfile.Write(filepath.Join(dst, ManifestName), raw, fileMode)
}
