package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// CRIU's log files, written to the work directory (or to the image
// directory when no work directory is given).
const (
	DumpLog    = "dump.log"
	RestoreLog = "restore.log"
)

// CriuConfigAnnotation is the runtime spec annotation naming the CRIU
// configuration file that runc hands to CRIU when it checkpoints or
// restores the container. Without it runc uses /etc/criu/runc.conf. CRIU
// ignores a configuration file that does not exist.
const CriuConfigAnnotation = "org.criu.config"

// logTailLines bounds how many lines of a CRIU log an error carries.
const logTailLines = 12

// logTailBytes is how much of the end of a CRIU log is read for an error.
const logTailBytes = 64 << 10

// CheckpointOptions are the options of `runc checkpoint`.
type CheckpointOptions struct {
	// ImagePath receives CRIU's images. Required.
	ImagePath string
	// WorkPath receives CRIU's log (dump.log). Empty means ImagePath.
	WorkPath string
	// TCPEstablished dumps established TCP connections; without it a
	// container holding one cannot be dumped.
	TCPEstablished bool
	// FileLocks dumps file locks.
	FileLocks bool
	// ExtUnixSk allows unix sockets connected to peers outside the
	// container.
	ExtUnixSk bool
	// ShellJob allows a container attached to a terminal session.
	ShellJob bool
	// LeaveRunning keeps the container running after the dump; otherwise
	// runc removes it once CRIU has dumped it.
	LeaveRunning bool
	// ManageCgroupsMode is "" (runc's default, soft) or one of "soft",
	// "full", "strict" and "ignore".
	ManageCgroupsMode string
}

// RestoreOptions are the options of `runc restore` that depend on how the
// container was dumped.
type RestoreOptions struct {
	// TCPEstablished restores established TCP connections; the dump must
	// have used CheckpointOptions.TCPEstablished.
	TCPEstablished bool
	// TCPClose restores dumped TCP connections closed instead, e.g. when
	// the destination's network differs. It wins over TCPEstablished.
	// runc restore has no flag for it: it travels in a CRIU configuration
	// file (see CriuConfig and CriuConfigAnnotation).
	TCPClose bool
	// FileLocks restores file locks; it must match the dump.
	FileLocks bool
	// ManageCgroupsMode is "" (runc's default, soft) or one of "soft",
	// "full", "strict" and "ignore".
	ManageCgroupsMode string
	// LazyPages restores a lazy dump (see StartLazyCheckpoint): the
	// task's memory comes from a `criu lazy-pages` daemon already
	// listening in the restore's work directory.
	LazyPages bool
}

// Checkpoint dumps container id with CRIU through `runc checkpoint`. Unless
// opts.LeaveRunning is set the container is gone afterwards. When the dump
// fails CRIU resumes the container, and the error carries the end of
// CRIU's dump.log.
//
// Cancelling ctx kills runc, which may leave the container frozen: give the
// dump a generous deadline rather than a short one.
func (r *Runc) Checkpoint(ctx context.Context, id string, opts CheckpointOptions) error {
	args, err := checkpointArgs(id, opts)
	if err != nil {
		return fmt.Errorf("runc checkpoint %s: %w", id, err)
	}
	r.logger().Debug("checkpointing container", "id", id, "image_path", opts.ImagePath,
		"work_path", opts.WorkPath, "leave_running", opts.LeaveRunning,
		"tcp_established", opts.TCPEstablished, "file_locks", opts.FileLocks)
	if _, err := r.output(ctx, "checkpoint "+id, args...); err != nil {
		logDir := opts.WorkPath
		if logDir == "" {
			logDir = opts.ImagePath
		}
		if tail := CriuLogTail(filepath.Join(logDir, DumpLog)); tail != "" {
			return fmt.Errorf("%w; %s: %s", err, DumpLog, tail)
		}
		return err
	}
	return nil
}

// checkpointArgs returns the `runc checkpoint` command line after the
// global flags.
func checkpointArgs(id string, opts CheckpointOptions) ([]string, error) {
	if id == "" {
		return nil, errors.New("no container id")
	}
	if opts.ImagePath == "" {
		return nil, errors.New("no image path")
	}
	if err := checkCgroupsMode(opts.ManageCgroupsMode); err != nil {
		return nil, err
	}
	args := []string{"checkpoint", "--image-path", opts.ImagePath}
	if opts.WorkPath != "" {
		args = append(args, "--work-path", opts.WorkPath)
	}
	if opts.LeaveRunning {
		args = append(args, "--leave-running")
	}
	if opts.TCPEstablished {
		args = append(args, "--tcp-established")
	}
	if opts.FileLocks {
		args = append(args, "--file-locks")
	}
	if opts.ExtUnixSk {
		args = append(args, "--ext-unix-sk")
	}
	if opts.ShellJob {
		args = append(args, "--shell-job")
	}
	if opts.ManageCgroupsMode != "" {
		args = append(args, "--manage-cgroups-mode", opts.ManageCgroupsMode)
	}
	return append(args, id), nil
}

// RestoreArgs returns the flags for `runc restore` that match opts, for the
// shim's Config.RestoreArgs. TCPClose has no runc flag and adds none: use
// CriuConfig for it.
func RestoreArgs(opts RestoreOptions) []string {
	var args []string
	if opts.TCPEstablished && !opts.TCPClose {
		args = append(args, "--tcp-established")
	}
	if opts.FileLocks {
		args = append(args, "--file-locks")
	}
	if opts.ManageCgroupsMode != "" {
		args = append(args, "--manage-cgroups-mode", opts.ManageCgroupsMode)
	}
	if opts.LazyPages {
		args = append(args, "--lazy-pages")
	}
	return args
}

// CriuConfig returns the lines of a CRIU configuration file carrying the
// restore options that runc has no flag for, or nil when there are none.
// runc hands the file named by the spec's CriuConfigAnnotation to CRIU.
func CriuConfig(opts RestoreOptions) []byte {
	if opts.TCPClose {
		return []byte("tcp-close\n")
	}
	return nil
}

// CriuTLS are the PEM files of CRIU's TLS for a lazy migration's page
// transfer: both ends present a certificate signed by CA and check the
// other's (the page client also checks that the page server's certificate
// names the address it dials). runc has no flag for it: the page server's
// side goes in the container's CRIU configuration file (Config, and
// CriuConfigAnnotation); CRIU reads the files when the client connects.
type CriuTLS struct {
	CA, Cert, Key string
	// AnyName: the page client checks only that the page server's
	// certificate is signed by CA, not that it names the address dialled
	// (--tls-no-cn-verify). Node certificates often name their node by a
	// DNS name alone; and a client that refuses the server's certificate
	// hangs up cleanly, which the source's CRIU takes for a finished
	// transfer.
	AnyName bool
}

// Config is the lines of a CRIU configuration file that turn TLS on.
func (t CriuTLS) Config() []byte {
	return fmt.Appendf(nil, "tls\ntls-cacert %s\ntls-cert %s\ntls-key %s\n", t.CA, t.Cert, t.Key)
}

// Args are CRIU's command-line flags that turn TLS on.
func (t CriuTLS) Args() []string {
	args := []string{"--tls", "--tls-cacert", t.CA, "--tls-cert", t.Cert, "--tls-key", t.Key}
	if t.AnyName {
		args = append(args, "--tls-no-cn-verify")
	}
	return args
}

// checkCgroupsMode returns an error unless mode is a --manage-cgroups-mode
// runc accepts, or empty.
func checkCgroupsMode(mode string) error {
	switch mode {
	case "", "soft", "full", "strict", "ignore":
		return nil
	}
	return fmt.Errorf("unknown cgroups mode %q (want soft, full, strict or ignore)", mode)
}

// CriuLogTail returns the gist of the CRIU log at path, on one line: its
// "Error" lines, or its last lines when it has none; at most a dozen
// lines, joined by " | ". It returns "" when the log cannot be read.
func CriuLogTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > logTailBytes {
		if _, err := f.Seek(fi.Size()-logTailBytes, io.SeekStart); err != nil {
			return ""
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	var all, errs []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		l := strings.TrimSpace(string(line))
		if l == "" {
			continue
		}
		all = append(all, l)
		if strings.Contains(l, "Error (") || strings.HasPrefix(l, "Error") {
			errs = append(errs, l)
		}
	}
	lines := errs
	if len(lines) == 0 {
		lines = all
	}
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return truncate(strings.Join(lines, " | "))
}
