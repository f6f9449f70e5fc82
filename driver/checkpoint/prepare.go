package checkpoint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"github.com/ferry-nomad/ferry/driver/runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Names inside a task directory, as laid out by the driver: the overlay's
// upper directory, and the rootfs the overlay is mounted at.
const (
	upperName  = "upper"
	rootfsName = "rootfs"
	// CriuConfigName is the task's CRIU configuration file in its task
	// directory, which its spec names (runc.CriuConfigAnnotation) from
	// its creation: written only while a restore (RebaseSpec) or a lazy
	// dump (CreateLazy) needs options runc has no flag for.
	CriuConfigName = "criu.conf"
)

// PrepareTaskDir lays out taskDir for restoring the checkpoint dir: it
// extracts rootfs.tar into taskDir/upper (created 0700; it must not exist
// or be empty) and copies config.json into taskDir. It mounts nothing: the
// caller mounts the overlay at taskDir/rootfs over the same image, then
// calls RebaseSpec. dir should have passed Open.
func PrepareTaskDir(dir, taskDir string) (err error) {
	if _, err := ReadManifest(dir); err != nil {
		return fmt.Errorf("prepare task dir %s: %w", taskDir, err)
	}
	if err := os.MkdirAll(taskDir, dirMode); err != nil {
		return fmt.Errorf("prepare task dir %s: %w", taskDir, err)
	}
	upper := filepath.Join(taskDir, upperName)
	if err := os.Mkdir(upper, dirMode); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("prepare task dir %s: %w", taskDir, err)
		}
		if err := checkEmptyDir(upper); err != nil {
			return fmt.Errorf("prepare task dir %s: %w", taskDir, err)
		}
	}
	spec := filepath.Join(taskDir, SpecName)
	defer func() {
		if err != nil {
			_ = os.RemoveAll(upper)
			_ = os.Remove(spec)
		}
	}()
	if err := unpackUpper(filepath.Join(dir, RootfsName), upper); err != nil {
		return fmt.Errorf("prepare task dir %s: %w", taskDir, err)
	}
	data, err := os.ReadFile(filepath.Join(dir, SpecName))
	if err != nil {
		return fmt.Errorf("prepare task dir %s: read %s: %w", taskDir, SpecName, err)
	}
	if err := atomicfile.WriteUnsynced(spec, data, fileMode); err != nil {
		return fmt.Errorf("prepare task dir %s: write %s: %w", taskDir, SpecName, err)
	}
	return nil
}

// checkEmptyDir fails unless dir is a directory without entries.
func checkEmptyDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	return nil
}

// unpackUpper extracts the rootfs tar src into the directory upper.
func unpackUpper(src, upper string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", RootfsName, err)
	}
	defer f.Close()
	if err := unpackTree(bufio.NewReaderSize(f, 1<<20), upper); err != nil {
		return fmt.Errorf("unpack %s: %w", RootfsName, err)
	}
	return nil
}

// RebaseSpec rewrites taskDir/config.json, as copied by PrepareTaskDir, for
// a restore in taskDir: the rootfs becomes taskDir/rootfs, and the spec's
// runc.CriuConfigAnnotation names taskDir/criu.conf; the rest of the spec
// is kept. When opts need restore options that runc has no flag for
// (TCPClose), it writes them to that file; otherwise it removes one left
// by an earlier restore. Pass the same opts to runc.RestoreArgs for the
// shim.
//
// CRIU reads that file for the restored container's next dump too: remove
// it once the restore is done (RemoveCriuConfig).
func RebaseSpec(taskDir string, opts runc.RestoreOptions) error {
	p := filepath.Join(taskDir, SpecName)
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("rebase spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("rebase spec: decode %s: %w", p, err)
	}
	if s.Root == nil {
		s.Root = &specs.Root{}
	}
	s.Root.Path = filepath.Join(taskDir, rootfsName)

	confPath := filepath.Join(taskDir, CriuConfigName)
	if s.Annotations == nil {
		s.Annotations = make(map[string]string)
	}
	s.Annotations[runc.CriuConfigAnnotation] = confPath
	if conf := runc.CriuConfig(opts); conf != nil {
		if err := atomicfile.WriteUnsynced(confPath, conf, fileMode); err != nil {
			return fmt.Errorf("rebase spec: write %s: %w", confPath, err)
		}
	} else if err := os.Remove(confPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rebase spec: %w", err)
	}

	out, err := json.MarshalIndent(&s, "", "\t")
	if err != nil {
		return fmt.Errorf("rebase spec: encode %s: %w", p, err)
	}
	if err := atomicfile.WriteUnsynced(p, out, fileMode); err != nil {
		return fmt.Errorf("rebase spec: write %s: %w", p, err)
	}
	return nil
}

// RemoveCriuConfig removes the CRIU configuration file RebaseSpec may have
// written into taskDir, once the restore is done, so that it does not
// apply to the restored container's next dump. A missing file is fine.
func RemoveCriuConfig(taskDir string) error {
	err := os.Remove(filepath.Join(taskDir, CriuConfigName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove CRIU config: %w", err)
	}
	return nil
}
