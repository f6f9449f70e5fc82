package checkpoint

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/shoenig/test/must"
)

// memoryScript holds 32 MiB of text in the shell's memory, prints its
// md5 once ("start SUM"), again on SIGUSR1 ("check SUM"), and counts every
// 200 ms, all into /out.log.
const memoryScript = `exec >/out.log 2>&1
x=$(yes 0123456789abcdef | head -c 33554432 | tr -d '\n')
echo "start $(echo "$x" | md5sum)"
trap 'echo "check $(echo "$x" | md5sum)"' USR1
i=0; while true; do i=$((i+1)); echo "count $i"; sleep 0.2; done`

// lazyWorld is a source container holding memory, and the directories of
// both halves of a lazy migration on this machine.
type lazyWorld struct {
	r                    *runc.Runc
	src                  *runctest.Bundle
	dstBundle, dstID     string
	srcImages, srcWork   string
	dstImages, dstWork   string
	pageServer, startSum string
	ctx                  context.Context
}

// lazyPipes sets fs.pipe-max-size to what CRIU's lazy page transfer needs
// for the test, and back after it.
func lazyPipes(t *testing.T) {
	const sysctl = "/proc/sys/fs/pipe-max-size"
	orig, err := os.ReadFile(sysctl)
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(sysctl, []byte("4194304"), 0o644))
	t.Cleanup(func() { _ = os.WriteFile(sysctl, orig, 0o644) })
}

// newLazyWorld runs the source container, with criuConfig as its CRIU
// configuration file when it is not nil.
func newLazyWorld(t *testing.T, criuConfig []byte) *lazyWorld {
	t.Helper()
	requireCriu(t)
	lazyPipes(t)
	b := runctest.NewBundle(t, "/bin/sh", "-c", memoryScript)
	for _, a := range []string{"yes", "md5sum"} {
		must.NoError(t, os.Symlink("busybox", filepath.Join(b.Dir, "rootfs", "bin", a)))
	}
	if criuConfig != nil {
		conf := filepath.Join(b.Dir, "criu.conf")
		must.NoError(t, os.WriteFile(conf, criuConfig, 0o600))
		b.Spec.Annotations = map[string]string{runc.CriuConfigAnnotation: conf}
		b.Write(t)
	}
	root := t.TempDir()
	runctest.RunDetached(t, root, b)
	w := &lazyWorld{
		r: &runc.Runc{Path: runctest.RuncPath(), Root: root}, src: b,
		srcImages: t.TempDir(), srcWork: t.TempDir(), dstImages: t.TempDir(), dstWork: t.TempDir(),
		pageServer: freePort(t),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	w.ctx = ctx
	w.startSum = waitLine(t, w.srcLog(), regexp.MustCompile(`start (\w+)`), 30*time.Second)

	// The destination's container: another ID and cgroup over the same
	// rootfs (the source's stays until its memory is all served).
	w.dstID = runctest.RandomID("ferry-test-dst-")
	spec := runctest.Spec(b.Spec.Process.Args, "/ferry-test/"+w.dstID)
	spec.Root.Path = filepath.Join(b.Dir, "rootfs")
	w.dstBundle = t.TempDir()
	(&runctest.Bundle{Dir: w.dstBundle, ID: w.dstID, Spec: spec}).Write(t)
	runctest.Cleanup(t, root, w.dstID)
	return w
}

func (w *lazyWorld) srcLog() string { return filepath.Join(w.src.Dir, "rootfs", "out.log") }

// dump starts the lazy dump and waits for its page server, then copies
// its images to the destination's directory.
func (w *lazyWorld) dump(t *testing.T) *runc.LazyCheckpoint {
	t.Helper()
	start := time.Now()
	l, err := w.r.StartLazyCheckpoint(w.ctx, w.src.ID, runc.CheckpointOptions{
		ImagePath: w.srcImages, WorkPath: w.srcWork, ManageCgroupsMode: "ignore",
	}, w.pageServer)
	must.NoError(t, err)
	t.Cleanup(l.Stop)
	must.NoError(t, <-l.Ready())
	t.Logf("page server ready after %s", time.Since(start).Round(time.Millisecond))
	// Frozen from now on: CRIU resuming it on a failure cannot make it
	// run beside its copy.
	must.NoError(t, w.r.Pause(w.ctx, w.src.ID))
	out, err := exec.Command("cp", "-a", w.srcImages+"/.", w.dstImages).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	return l
}

// restore starts the lazy-pages daemon and restores the destination's
// container with it; it returns the daemon and the restore's error.
func (w *lazyWorld) restore(t *testing.T) (*LazyPages, error) {
	return w.restoreTLS(t, nil)
}

// restoreTLS is restore with the daemon's TLS.
func (w *lazyWorld) restoreTLS(t *testing.T, tls *runc.CriuTLS) (*LazyPages, error) {
	t.Helper()
	d, err := StartLazyPages(w.ctx, LazyPagesOptions{CriuPath: "criu", ImagesDir: w.dstImages, WorkDir: w.dstWork, Source: w.pageServer, TLS: tls})
	must.NoError(t, err)
	t.Cleanup(d.Stop)
	args := append(w.r.GlobalArgs(), "restore", "--detach", "--bundle", w.dstBundle, "--image-path", w.dstImages, "--work-path", w.dstWork)
	args = append(args, runc.RestoreArgs(runc.RestoreOptions{ManageCgroupsMode: "ignore", LazyPages: true})...)
	start := time.Now()
	// A restore whose daemon failed can hang in CRIU: bounded, and the
	// container's processes are removed at the test's end.
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.r.Path, append(args, w.dstID)...)
	// runc and the CRIU under it, killed together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		// A killed runc leaves the rootfs it mounted for CRIU.
		_ = syscall.Unmount(filepath.Join(w.r.Root, w.dstID, "criu-root"), syscall.MNT_DETACH)
		return d, fmt.Errorf("runc restore: %v: %s; %s", err, out, runc.CriuLogTail(filepath.Join(w.dstWork, runc.RestoreLog)))
	}
	t.Logf("restored in %s", time.Since(start).Round(time.Millisecond))
	return d, nil
}

// The whole lazy migration on one machine: the source's page server is
// ready, the restored task runs before its memory arrived, the daemon
// reports every page transferred (some on demand, the rest in the
// background), the source's container is then gone, and the restored
// task's memory is what it was.
func TestLazyMigration(t *testing.T) {
	w := newLazyWorld(t, nil)
	l := w.dump(t)
	d, err := w.restore(t)
	must.NoError(t, err)

	p, err := d.Result()
	must.NoError(t, err)
	t.Logf("progress: %+v", p)
	must.True(t, p.Complete())
	must.Greater(t, int64(6000), p.Pages) // the 32 MiB of text, and more
	must.Positive(t, p.Faults)
	must.Less(t, p.Pages, p.OnDemand)

	// CRIU ends the dump once the source is thawed: it then kills it.
	select {
	case <-l.Done():
		t.Fatal("the dump ended while its container was frozen")
	case <-time.After(500 * time.Millisecond):
	}
	must.NoError(t, w.r.Resume(w.ctx, w.src.ID))
	select {
	case <-l.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the source's dump did not end after every page was served")
	}
	must.NoError(t, l.Err())
	_, err = w.r.State(w.ctx, w.src.ID)
	must.ErrorIs(t, err, runc.ErrNotExist)

	// The restored task counts on, and its memory is intact.
	count := regexp.MustCompile(`count (\d+)`)
	before, _ := strconv.Atoi(waitLine(t, w.srcLog(), count, 5*time.Second))
	time.Sleep(time.Second)
	after, _ := strconv.Atoi(waitLine(t, w.srcLog(), count, 5*time.Second))
	must.Greater(t, before, after)
	must.NoError(t, w.r.Kill(w.ctx, w.dstID, syscall.SIGUSR1, false))
	must.Eq(t, w.startSum, waitLine(t, w.srcLog(), regexp.MustCompile(`check (\w+)`), 30*time.Second))
	t.Logf("restored task at count %d, memory intact (%s)", after, w.startSum)
}

// With TLS, both ends present certificates of the cluster's CA (the
// source's naming its address): the memory arrives whole. A client whose
// certificate another CA signed is refused, and the source's task, resumed
// by CRIU, stays frozen, its memory intact.
func TestLazyMigrationTLS(t *testing.T) {
	ca := testutil.NewCA(t)
	src, dst := ca.Node(t, "source", "127.0.0.1"), ca.Node(t, "destination", "127.0.0.1")
	srcTLS := runc.CriuTLS{CA: ca.File, Cert: src.CertFile, Key: src.KeyFile}
	dstTLS := &runc.CriuTLS{CA: ca.File, Cert: dst.CertFile, Key: dst.KeyFile}

	t.Run("same CA", func(t *testing.T) {
		w := newLazyWorld(t, srcTLS.Config())
		l := w.dump(t)
		d, err := w.restoreTLS(t, dstTLS)
		must.NoError(t, err)
		p, err := d.Result()
		must.NoError(t, err)
		t.Logf("progress: %+v", p)
		must.NoError(t, w.r.Resume(w.ctx, w.src.ID))
		<-l.Done()
		must.NoError(t, l.Err())
		must.StrContains(t, readFile(t, filepath.Join(w.dstWork, LazyPagesLog)), "TLS handshake completed")
		must.NoError(t, w.r.Kill(w.ctx, w.dstID, syscall.SIGUSR1, false))
		must.Eq(t, w.startSum, waitLine(t, w.srcLog(), regexp.MustCompile(`check (\w+)`), 30*time.Second))
	})
	t.Run("other CA", func(t *testing.T) {
		other := testutil.NewCA(t)
		intruder := other.Node(t, "destination", "127.0.0.1")
		w := newLazyWorld(t, srcTLS.Config())
		l := w.dump(t)
		d, restoreErr := w.restoreTLS(t, &runc.CriuTLS{CA: ca.File, Cert: intruder.CertFile, Key: intruder.KeyFile})
		t.Logf("restore: %v", restoreErr)
		p, err := d.Result()
		t.Logf("progress: %+v, error: %v", p, err)
		must.Error(t, err)
		<-l.Done()
		must.Error(t, l.Err())
		if restoreErr == nil {
			must.NoError(t, w.r.Delete(w.ctx, w.dstID, true))
		}
		w.sourceIntact(t)
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	must.NoError(t, err)
	return string(b)
}

// The source's CRIU is lost while the destination fetches the memory
// (stopped before the restore, so that the copy is held mid-way, then
// killed): the daemon's result is an error, never a success; the source's
// task, which CRIU resumes, stays frozen (it never runs beside its copy)
// until thawed, and then runs on with its memory.
func TestLazyMigrationSourceLost(t *testing.T) {
	w := newLazyWorld(t, nil)
	l := w.dump(t)
	d := w.restoreMidCopy(t, l)
	l.Stop()
	must.Error(t, l.Err())

	p, err := d.Result()
	t.Logf("progress: %+v, error: %v", p, err)
	must.Error(t, err)
	must.False(t, p.Complete())
	must.NoError(t, w.r.Delete(w.ctx, w.dstID, true))
	w.sourceIntact(t)
}

// sourceIntact checks that the source's task, after a failed transfer,
// is paused (it never ran beside its copy), and once resumed runs with its
// memory intact.
func (w *lazyWorld) sourceIntact(t *testing.T) {
	t.Helper()
	st, err := w.r.State(w.ctx, w.src.ID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusPaused, st.Status)
	must.NoError(t, w.r.Resume(w.ctx, w.src.ID))
	must.NoError(t, w.r.Kill(w.ctx, w.src.ID, syscall.SIGUSR1, false))
	must.Eq(t, w.startSum, waitLine(t, w.srcLog(), regexp.MustCompile(`check (\w+)`), 30*time.Second))
}

// restoreMidCopy restores the destination with the source's CRIU given 1%
// of a CPU, so that the copy takes many seconds, and returns once the
// background copy has begun.
func (w *lazyWorld) restoreMidCopy(t *testing.T, l *runc.LazyCheckpoint) *LazyPages {
	t.Helper()
	throttle(t, l.CriuPid())
	d, err := w.restore(t)
	must.NoError(t, err)
	waitFor(t, 30*time.Second, "the background copy to begin", func() bool {
		p, _ := d.Progress()
		return p.Read > 0
	})
	p, _ := d.Progress()
	must.False(t, p.Complete(), must.Sprintf("copy complete already: %+v", p))
	return d
}

// The destination's daemon dies mid-copy while the driver holds copies of
// its userfaultfds (Guard): the restored task, touching its missing
// memory, waits instead of reading zeros (it never prints a checksum of
// memory with holes), and is then killed.
func TestLazyMigrationGuarded(t *testing.T) {
	w := newLazyWorld(t, nil)
	d := w.restoreMidCopy(t, w.dump(t))
	n, err := d.Guard()
	must.NoError(t, err)
	must.Positive(t, n)
	t.Cleanup(d.Release)
	d.Stop()
	p, err := d.Result()
	t.Logf("progress: %+v, error: %v", p, err)
	must.Error(t, err)

	must.NoError(t, w.r.Kill(w.ctx, w.dstID, syscall.SIGUSR1, false))
	time.Sleep(3 * time.Second)
	out, _ := os.ReadFile(w.srcLog())
	must.StrNotContains(t, string(out), "check ", must.Sprint("the restored task read memory it never received"))
	must.NoError(t, w.r.Kill(w.ctx, w.dstID, syscall.SIGKILL, true))
	waitFor(t, 10*time.Second, "the restored task to die", func() bool {
		st, err := w.r.State(w.ctx, w.dstID)
		return err == nil && st.Status == runc.StatusStopped
	})
}

// throttle moves pid into a CPU cgroup (v1) of its own limited to 1% of
// a CPU, for the rest of the test.
func throttle(t *testing.T, pid int) {
	t.Helper()
	must.Positive(t, pid)
	dir := filepath.Join("/sys/fs/cgroup/cpu", runctest.RandomID("ferry-test-throttle-"))
	must.NoError(t, os.Mkdir(dir, 0o755))
	t.Cleanup(func() { _ = os.Remove(dir) })
	must.NoError(t, os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte("100000"), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte("1000"), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644))
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort is a free "127.0.0.1:port".
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// waitLine waits for the last line of file that re matches, and returns
// its first group.
func waitLine(t *testing.T, file string, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(file)
		if m := re.FindAllStringSubmatch(string(data), -1); m != nil {
			return m[len(m)-1][1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q in %s within %s:\n%s", re, file, timeout, lastLines(string(data), 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
