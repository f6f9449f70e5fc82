package checkpoint

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// counterScript changes the rootfs (a new file, a deleted image file, a
// directory of the image made opaque, a hard link and a symlink) and then
// prints "count N" every 100 ms, writing N to /data.txt.
const counterScript = `rm /etc/deleteme && rm -rf /opaque && mkdir /opaque && echo fresh > /opaque/new &&
ln /opaque/new /opaque/hard && ln -s /data.txt /data.link || exit 1
i=0; while true; do echo "count $i"; echo $i > /data.txt; i=$((i+1)); sleep 0.1; done`

// extraApplets are linked to busybox in the image besides runctest's.
var extraApplets = []string{"rm", "mkdir", "ln", "nc", "yes", "md5sum"}

func requireCriu(t *testing.T) {
	t.Helper()
	runctest.Require(t)
	if _, err := exec.LookPath("criu"); err != nil {
		t.Skip("criu not found")
	}
}

// newImage returns a busybox image rootfs, the overlay's lower directory.
// It has /etc/deleteme and /opaque/{a,b} for counterScript to change.
func newImage(t *testing.T) string {
	t.Helper()
	b := runctest.NewBundle(t, "true")
	lower := filepath.Join(b.Dir, "rootfs")
	for _, a := range extraApplets {
		must.NoError(t, os.Symlink("busybox", filepath.Join(lower, "bin", a)))
	}
	must.NoError(t, os.WriteFile(filepath.Join(lower, "etc", "deleteme"), []byte("old"), 0o644))
	must.NoError(t, os.Mkdir(filepath.Join(lower, "opaque"), 0o755))
	for _, f := range []string{"a", "b"} {
		must.NoError(t, os.WriteFile(filepath.Join(lower, "opaque", f), []byte(f), 0o644))
	}
	return lower
}

// mountOverlay mounts the task's overlay at taskDir/rootfs the way the
// driver does (driver/plugin/rootfs.go), and unmounts it at the end of the
// test.
func mountOverlay(t *testing.T, lower, taskDir string) string {
	t.Helper()
	upper, work, target := filepath.Join(taskDir, "upper"), filepath.Join(taskDir, "work"), filepath.Join(taskDir, "rootfs")
	for _, d := range []string{upper, work, target} {
		must.NoError(t, os.MkdirAll(d, 0o700))
	}
	must.NoError(t, os.Chmod(taskDir, 0o711))
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	must.NoError(t, unix.Mount("overlay", target, "overlay", unix.MS_NODEV, opts))
	t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
	must.NoError(t, os.Chmod(target, 0o755))
	return target
}

// task is a container of the test under a shim.
type task struct {
	t        *testing.T
	id       string
	dir      string
	runc     *runc.Runc
	stdout   *lineReader
	stdoutFn string
	stderrFn string
	proc     *shim.Process
	stateDir string
}

// newTaskDir makes a task directory with its overlay over lower and a
// spec running args.
func newTaskDir(t *testing.T, lower string, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "task")
	must.NoError(t, os.Mkdir(dir, 0o700))
	rootfs := mountOverlay(t, lower, dir)
	spec := runctest.Spec(args, "/ferry-test/"+runctest.RandomID("ckpt-"))
	spec.Root.Path = rootfs
	data, err := json.MarshalIndent(spec, "", "\t")
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(dir, SpecName), data, 0o600))
	return dir
}

// newTask prepares a task for the bundle taskDir under runcRoot, with new
// FIFOs read like Nomad's log collector does.
func newTask(t *testing.T, r *runc.Runc, taskDir string) *task {
	t.Helper()
	fifos := t.TempDir()
	tk := &task{
		t:        t,
		id:       runctest.RandomID("ferry-ckpt-"),
		dir:      taskDir,
		runc:     r,
		stdoutFn: filepath.Join(fifos, "stdout"),
		stderrFn: filepath.Join(fifos, "stderr"),
		stateDir: t.TempDir(),
	}
	must.NoError(t, unix.Mkfifo(tk.stdoutFn, 0o600))
	must.NoError(t, unix.Mkfifo(tk.stderrFn, 0o600))
	tk.stdout = readLines(t, tk.stdoutFn)
	readLines(t, tk.stderrFn)
	runctest.Cleanup(t, r.Root, tk.id)
	return tk
}

// start starts the container under a new shim: run, or restore from
// images with extra runc restore flags.
func (tk *task) start(images string, restoreArgs []string) {
	tk.t.Helper()
	tk.startIn(images, tk.t.TempDir(), restoreArgs)
}

// startIn is start with CRIU's work directory for a restore.
func (tk *task) startIn(images, work string, restoreArgs []string) {
	tk.t.Helper()
	cfg := shim.Config{
		ID:         tk.id,
		Bundle:     tk.dir,
		RuncPath:   tk.runc.Path,
		RuncRoot:   tk.runc.Root,
		StdoutPath: tk.stdoutFn,
		StderrPath: tk.stderrFn,
		Mode:       shim.ModeRun,
	}
	if images != "" {
		cfg.Mode = shim.ModeRestore
		cfg.ImagePath = images
		cfg.WorkPath = work
		cfg.RestoreArgs = restoreArgs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := shim.Start(ctx, os.Args[0], tk.stateDir, cfg)
	if err != nil {
		tk.t.Fatalf("start %s: %v\n%s: %s", cfg.Mode, err, runc.RestoreLog,
			runc.CriuLogTail(filepath.Join(work, runc.RestoreLog)))
	}
	tk.proc = p
	tk.t.Cleanup(func() {
		if tk.t.Failed() {
			data, _ := os.ReadFile(filepath.Join(tk.stateDir, "shim.log"))
			tk.t.Logf("shim.log of %s:\n%s", tk.id, data)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = tk.runc.Delete(ctx, tk.id, true)
		p.Ack()
		deadline := time.Now().Add(3 * time.Second)
		for p.Alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if p.Alive() {
			_ = syscall.Kill(p.ShimPID, syscall.SIGKILL)
		}
		runctest.Reap(p.ShimPID)
	})
}

// wait returns the container's exit status as the shim reports it.
func (tk *task) wait() *shim.ExitStatus {
	tk.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := tk.proc.Wait(ctx)
	must.NoError(tk.t, err)
	return st
}

// counts returns the numbers of the "count N" lines printed so far.
func (tk *task) counts() []int {
	var out []int
	for _, l := range tk.stdout.get() {
		if n, ok := strings.CutPrefix(l, "count "); ok {
			if v, err := strconv.Atoi(n); err == nil {
				out = append(out, v)
			}
		}
	}
	return out
}

// waitCounts waits until the task printed at least n counts.
func (tk *task) waitCounts(n int) []int {
	tk.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c := tk.counts()
		if len(c) >= n {
			return c
		}
		if time.Now().After(deadline) {
			tk.t.Fatalf("%s printed %d counts, want %d: %q", tk.id, len(c), n, tk.stdout.get())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running fails the test unless runc says the container runs.
func (tk *task) running() {
	tk.t.Helper()
	st, err := tk.runc.State(context.Background(), tk.id)
	must.NoError(tk.t, err)
	must.Eq(tk.t, runc.StatusRunning, st.Status)
}

// gone fails the test unless runc no longer knows the container.
func (tk *task) gone() {
	tk.t.Helper()
	_, err := tk.runc.State(context.Background(), tk.id)
	must.True(tk.t, errors.Is(err, runc.ErrNotExist), must.Sprintf("state: %v", err))
}

// lineReader collects the lines written to a FIFO, reopening it after
// each writer is gone, until the end of the test.
type lineReader struct {
	mu    sync.Mutex
	lines []string
}

func readLines(t *testing.T, path string) *lineReader {
	r := &lineReader{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			f, err := os.Open(path)
			if err != nil {
				return
			}
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				r.mu.Lock()
				r.lines = append(r.lines, sc.Text())
				r.mu.Unlock()
			}
			_ = f.Close()
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		// Unblock an open waiting for a writer, or a read.
		for {
			w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err == nil {
				_ = w.Close()
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	return r
}

func (r *lineReader) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}
