package checkpoint

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/hashicorp/go-hclog"
)

// LazyWorkName is the directory of the task directory where CRIU works
// (dump.log) while a lazy dump serves the task's memory: it outlives the
// checkpoint's packing, which leaves no work directory in the checkpoint.
const LazyWorkName = "lazy-dump"

// LazyDump is a lazy checkpoint on its source: everything but the task's
// anonymous memory is in the checkpoint directory, and CRIU serves that
// memory from the stopped task to one destination. The container is
// frozen (paused): if the transfer fails and CRIU resumes the task, it
// does not run beside its copy.
type LazyDump struct {
	*Created
	r      *runc.Runc
	id     string
	dump   *runc.LazyCheckpoint
	logger hclog.Logger
}

// CreateLazy checkpoints container id as Create does, but lazily: CRIU
// writes every image but the task's anonymous memory into dir/images and
// starts its page server at pageServer ("host:port"; CRIU listens at that
// port on every address). Once the page server is ready the container is
// paused, then the rootfs and the spec are packed and the manifest
// (Options.LazyPages set) written; with sink set, every file is handed to
// it as it is read, and the manifest last, as Create does. With tls, the page server takes only a
// client with a certificate of tls.CA: tls goes into the task's CRIU
// configuration file (taskDir/criu.conf, which its spec names from its
// creation: runc.CriuConfigAnnotation), removed once the page server is
// ready (the certificate files must stay until the destination has
// connected).
//
// When the dump fails, CRIU resumes the container, which runs on, and dir
// is removed. A failure after the page server was ready ends the dump
// (CRIU resumes the task, which stays paused: the caller resumes it to
// stop it normally) and wraps ErrDumped.
func CreateLazy(ctx context.Context, r *runc.Runc, id, taskDir, dir string, meta Meta, opts Options, sink Sink, pageServer string, tls *runc.CriuTLS, logger hclog.Logger) (*LazyDump, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.With("container", id, "checkpoint", dir, "page_server", pageServer)
	opts.LazyPages = true
	if err := os.MkdirAll(filepath.Dir(dir), dirMode); err != nil {
		return nil, fmt.Errorf("lazy checkpoint %s: create parent: %w", id, err)
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		return nil, fmt.Errorf("lazy checkpoint %s: create %s: %w", id, dir, err)
	}
	images, work := ImagesDir(dir), filepath.Join(taskDir, LazyWorkName)
	_ = os.RemoveAll(work)
	for _, d := range []string{images, work} {
		if err := os.Mkdir(d, dirMode); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("lazy checkpoint %s: create %s: %w", id, d, err)
		}
	}
	fail := func(err error) (*LazyDump, error) {
		if rerr := os.RemoveAll(dir); rerr != nil {
			logger.Warn("remove failed checkpoint", "error", rerr)
		}
		return nil, fmt.Errorf("lazy checkpoint %s: %w", id, err)
	}
	if tls != nil {
		criuConfig := filepath.Join(taskDir, CriuConfigName)
		if err := os.WriteFile(criuConfig, tls.Config(), fileMode); err != nil {
			return fail(fmt.Errorf("write CRIU configuration: %w", err))
		}
		defer os.Remove(criuConfig)
	}

	m := newManifest(ctx, r, id, meta, opts, logger)
	logger.Debug("dumping container lazily", "tcp_established", opts.TCPEstablished, "file_locks", opts.FileLocks)
	start := time.Now()
	dump, err := r.StartLazyCheckpoint(ctx, id, runc.CheckpointOptions{
		ImagePath: images, WorkPath: work, TCPEstablished: opts.TCPEstablished, FileLocks: opts.FileLocks,
	}, pageServer)
	if err != nil {
		return fail(err)
	}
	select {
	case err = <-dump.Ready():
	case <-ctx.Done():
		dump.Stop()
		err = ctx.Err()
	}
	if err != nil {
		return fail(fmt.Errorf("dump: %w", err))
	}
	m.DumpDuration = time.Since(start)
	l := &LazyDump{r: r, id: id, dump: dump, logger: logger}
	if err := r.Pause(ctx, id); err != nil {
		dump.Stop()
		return nil, fmt.Errorf("lazy checkpoint %s: pause: %w: %w", id, err, ErrDumped)
	}
	logger.Info("container dumped lazily; serving its memory", "duration", m.DumpDuration)

	start = time.Now()
	fw := newFollower(dir, sink, logger)
	defer fw.close()
	if err := pack(ctx, m, taskDir, dir, fw, nil); err != nil {
		dump.Stop()
		return nil, fmt.Errorf("lazy checkpoint %s: %w: %w", id, err, ErrDumped)
	}
	m.PackDuration = time.Since(start)
	m.CreatedAt = time.Now().UTC()
	raw, err := writeManifest(dir, m)
	if err != nil {
		dump.Stop()
		return nil, fmt.Errorf("lazy checkpoint %s: %w: %w", id, err, ErrDumped)
	}
	l.Created = &Created{Manifest: m, Raw: raw, Digest: Digest(raw), SinkErr: fw.sinkErr}
	logger.Info("lazy checkpoint created", "files", len(m.Files), "bytes", m.Bytes, "pack_duration", m.PackDuration)
	return l, nil
}

// Done is closed when CRIU has stopped serving: every page was served
// (Err is nil, the container is gone), or the transfer failed.
func (l *LazyDump) Done() <-chan struct{} { return l.dump.Done() }

// Err is, once Done is closed, why the transfer failed, or nil. CRIU's
// word that it served every page is not proof that they arrived: only
// the destination knows (LazyPages.Result).
func (l *LazyDump) Err() error { return l.dump.Err() }

// Finish ends the source's part once the destination has every page: it
// resumes the container, and CRIU, which waits for that, removes it.
func (l *LazyDump) Finish(ctx context.Context) error {
	if err := l.r.Resume(ctx, l.id); err != nil {
		return fmt.Errorf("finish lazy checkpoint %s: %w", l.id, err)
	}
	select {
	case <-l.Done():
		return l.Err()
	case <-ctx.Done():
		return fmt.Errorf("finish lazy checkpoint %s: %w", l.id, ctx.Err())
	}
}

// Abort ends the transfer without a destination: CRIU stops serving and
// resumes the task, which stays paused until the caller resumes it (to
// stop it normally) or kills it.
func (l *LazyDump) Abort() { l.dump.Stop() }
