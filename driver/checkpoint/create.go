package checkpoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/hashicorp/go-hclog"
)

// ErrDumped is wrapped by an error of Create that happened after the
// container was dumped: the container is gone, but the checkpoint
// directory and its CRIU images are kept, so that the caller can restore
// the container in place from ImagesDir(dir) (its task directory is
// untouched) and then Remove the directory.
var ErrDumped = errors.New("container dumped and stopped; its images are kept for a restore in place")

// Created is a checkpoint made by Create.
type Created struct {
	*Manifest
	// Raw is manifest.json as written, and Digest its sha256 in hex: what
	// the catalogue records, so that the node restoring the checkpoint
	// checks the manifest before it reads a byte of it.
	Raw    []byte
	Digest string
	// SinkErr is why the sink was dropped before the end, if it was.
	SinkErr error
}

// Create checkpoints container id, whose bundle (config.json and overlay
// rootfs) is taskDir, into dir, which must not exist. It dumps the
// container with `runc checkpoint` into dir/images (the container is gone
// afterwards), packs taskDir/upper into dir/rootfs.tar, copies
// taskDir/config.json and last writes the manifest with the sum of every
// file.
//
// Every file is read once, as it is written: CRIU's memory pages while the
// dump runs, the rest once it is over. That one read hashes the file for
// the manifest and hands it to sink, if not nil. Nothing is synced: call
// Sync to make a checkpoint kept for later durable.
//
// When the dump fails CRIU resumes the container, which keeps running; dir
// is removed and the error carries the end of CRIU's log. A failure after
// the dump wraps ErrDumped.
func Create(ctx context.Context, r *runc.Runc, id, taskDir, dir string, meta Meta, opts Options, sink Sink, logger hclog.Logger) (*Created, error) {
	return create(ctx, r, id, taskDir, dir, meta, opts, sink, nil, logger)
}

// CreateRunning checkpoints container id as Create does, for a task that
// runs on (a periodic checkpoint: opts.LeaveRunning is set), which the
// caller has paused: CRIU dumps it and leaves it paused, its rootfs and
// spec are packed, and then resume is called, before CRIU's files are read
// and hashed. The task is so frozen only for the dump and the rootfs, both
// of one moment. resume is called whatever happens after the dump began.
func CreateRunning(ctx context.Context, r *runc.Runc, id, taskDir, dir string, meta Meta, opts Options, resume func(), logger hclog.Logger) (*Created, error) {
	opts.LeaveRunning = true
	return create(ctx, r, id, taskDir, dir, meta, opts, nil, sync.OnceFunc(resume), logger)
}

// create is Create, and with resume set CreateRunning.
func create(ctx context.Context, r *runc.Runc, id, taskDir, dir string, meta Meta, opts Options, sink Sink, resume func(), logger hclog.Logger) (*Created, error) {
	if resume != nil {
		defer resume()
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.With("container", id, "checkpoint", dir)
	if err := os.MkdirAll(filepath.Dir(dir), dirMode); err != nil {
		return nil, fmt.Errorf("checkpoint %s: create parent: %w", id, err)
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		return nil, fmt.Errorf("checkpoint %s: create %s: %w", id, dir, err)
	}
	images, work := filepath.Join(dir, ImagesName), filepath.Join(dir, workName)
	for _, d := range []string{images, work} {
		if err := os.Mkdir(d, dirMode); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("checkpoint %s: create %s: %w", id, d, err)
		}
	}

	m := newManifest(ctx, r, id, meta, opts, logger)

	logger.Debug("dumping container", "tcp_established", opts.TCPEstablished, "file_locks", opts.FileLocks)
	fw := newFollower(dir, sink, logger)
	defer fw.close()
	dumped := make(chan struct{})
	following := make(chan struct{})
	go func() {
		defer close(following)
		if resume == nil {
			// A paused task waits for nothing but CRIU: its files
			// are read once it runs again.
			fw.follow(dumped)
		}
	}()
	start := time.Now()
	err := r.Checkpoint(ctx, id, runc.CheckpointOptions{
		ImagePath:      images,
		WorkPath:       work,
		TCPEstablished: opts.TCPEstablished,
		FileLocks:      opts.FileLocks,
		LeaveRunning:   opts.LeaveRunning,
	})
	m.DumpDuration = time.Since(start)
	// The rest is the pack: what the follower has still to read of the
	// dump, then the rootfs and the spec.
	start = time.Now()
	close(dumped)
	<-following
	if err != nil {
		if rerr := os.RemoveAll(dir); rerr != nil {
			logger.Warn("remove failed checkpoint", "error", rerr)
		}
		return nil, fmt.Errorf("checkpoint %s: dump: %w", id, err)
	}
	logger.Info("container dumped", "duration", m.DumpDuration)

	if err := pack(ctx, m, taskDir, dir, fw, resume); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w: %w", id, err, ErrDumped)
	}
	m.PackDuration = time.Since(start)
	m.CreatedAt = time.Now().UTC()
	raw, err := writeManifest(dir, m)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w: %w", id, err, ErrDumped)
	}
	logger.Info("checkpoint created", "files", len(m.Files), "bytes", m.Bytes,
		"dump_duration", m.DumpDuration, "pack_duration", m.PackDuration, "streamed", sink != nil && fw.sinkErr == nil)
	return &Created{Manifest: m, Raw: raw, Digest: Digest(raw), SinkErr: fw.sinkErr}, nil
}

// newManifest is the manifest of a checkpoint of container id being made,
// before its files and durations are known.
func newManifest(ctx context.Context, r *runc.Runc, id string, meta Meta, opts Options, logger hclog.Logger) *Manifest {
	m := &Manifest{
		Version:     Version,
		ContainerID: id,
		AllocID:     meta.AllocID,
		Task:        meta.Task,
		NodeID:      meta.NodeID,
		NodeName:    meta.NodeName,
		ImageRef:    meta.ImageRef,
		ImageDigest: meta.ImageDigest,
		Platform:    meta.Platform,
		RuncVersion: meta.RuncVersion,
		CriuVersion: meta.CriuVersion,
		Options:     opts,
	}
	fillVersions(ctx, r, m, logger)
	return m
}

// pack completes a checkpoint after the dump: it drops CRIU's work
// directory, packs the rootfs changes, copies the spec, calls packed (if
// set), and reads what the follower has not read yet, filling in m.Files
// and m.Bytes.
func pack(ctx context.Context, m *Manifest, taskDir, dir string, fw *follower, packed func()) error {
	if err := os.RemoveAll(filepath.Join(dir, workName)); err != nil {
		return fmt.Errorf("remove CRIU work dir: %w", err)
	}
	if err := packUpper(ctx, filepath.Join(taskDir, "upper"), filepath.Join(dir, RootfsName)); err != nil {
		return err
	}
	if err := copyFile(filepath.Join(taskDir, SpecName), filepath.Join(dir, SpecName), fileMode); err != nil {
		return fmt.Errorf("copy %s: %w", SpecName, err)
	}
	if packed != nil {
		packed()
	}
	files, err := fw.finish(ctx)
	if err != nil {
		return err
	}
	m.Files = files
	m.Bytes = 0
	for _, f := range files {
		m.Bytes += f.Size
	}
	return nil
}

// Sync makes checkpoint dir durable: one flush of its file system instead
// of a sync of every file. Create does not sync, so that a live move does
// not wait for the disk; a checkpoint kept for later is synced after.
func Sync(dir string) error {
	if err := syncFS(dir); err != nil {
		return fmt.Errorf("sync checkpoint %s: %w", dir, err)
	}
	return nil
}

// packUpper writes the overlay upper directory upper to the tar dst.
func packUpper(ctx context.Context, upper, dst string) (err error) {
	fi, err := os.Lstat(upper)
	if err != nil {
		return fmt.Errorf("pack rootfs: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("pack rootfs: %s is not a directory", upper)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		return fmt.Errorf("pack rootfs: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(dst)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if err := packTree(ctx, upper, w); err != nil {
		return fmt.Errorf("pack rootfs %s: %w", upper, err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("pack rootfs: write %s: %w", RootfsName, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pack rootfs: write %s: %w", RootfsName, err)
	}
	return nil
}

// fillVersions fills in the runc and CRIU versions the caller left empty,
// as far as they can be found out.
func fillVersions(ctx context.Context, r *runc.Runc, m *Manifest, logger hclog.Logger) {
	if m.RuncVersion == "" {
		if v, err := r.Version(ctx); err == nil {
			m.RuncVersion = v
		} else {
			logger.Warn("runc version unknown", "error", err)
		}
	}
	if m.CriuVersion == "" {
		// runc runs the criu found in its PATH, which is ours.
		if p, err := exec.LookPath("criu"); err == nil {
			if v, err := CriuVersion(ctx, p); err == nil {
				m.CriuVersion = v
			} else {
				logger.Warn("CRIU version unknown", "error", err)
			}
		}
	}
}

// Remove deletes checkpoint dir. The manifest goes first, so that a
// removal cut short leaves an incomplete checkpoint, never one that looks
// complete. A directory that does not exist is not an error.
func Remove(dir string) error {
	if dir == "" || filepath.Clean(dir) == "/" {
		return fmt.Errorf("remove checkpoint: refusing to remove %q", dir)
	}
	if err := os.Remove(filepath.Join(dir, ManifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove checkpoint %s: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove checkpoint %s: %w", dir, err)
	}
	return nil
}
