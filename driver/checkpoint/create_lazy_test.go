package checkpoint

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// lazyCounterScript holds 16 MiB of text in the shell's memory, prints its
// md5 once ("start SUM") and on SIGUSR1 ("check SUM"), and counts every
// 100 ms.
const lazyCounterScript = `x=$(yes 0123456789abcdef | head -c 16777216 | tr -d '\n')
echo "start $(echo "$x" | md5sum)"
trap 'echo "check $(echo "$x" | md5sum)"' USR1
i=0; while true; do i=$((i+1)); echo "count $i"; sleep 0.1; done`

// annotate names the CRIU configuration file conf in the task's spec, as
// the driver's spec does for every task.
func annotate(t *testing.T, taskDir, conf string) {
	t.Helper()
	s := readSpec(t, taskDir)
	s.Annotations = map[string]string{runc.CriuConfigAnnotation: conf}
	data, err := json.Marshal(s)
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(taskDir, SpecName), data, 0o600))
}

// copyTaskDir lays out a task directory restoring checkpoint dir with
// opts over lower, as the driver does, but in a cgroup of its own: the
// task it copies still holds its cgroup on this machine.
func copyTaskDir(t *testing.T, dir, lower string, opts runc.RestoreOptions) string {
	t.Helper()
	taskDir := filepath.Join(t.TempDir(), "task")
	must.NoError(t, PrepareTaskDir(dir, taskDir))
	mountOverlay(t, lower, taskDir)
	must.NoError(t, RebaseSpec(taskDir, opts))
	s := readSpec(t, taskDir)
	s.Linux.CgroupsPath = "/ferry-test/" + runctest.RandomID("copy-")
	data, err := json.Marshal(s)
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(taskDir, SpecName), data, 0o600))
	return taskDir
}

// waitLinePrefix waits for a line of tk's output starting with prefix and
// returns the rest of it.
func (tk *task) waitLinePrefix(prefix string) string {
	tk.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, l := range tk.stdout.get() {
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		}
		if time.Now().After(deadline) {
			tk.t.Fatalf("%s printed no %q line: %q", tk.id, prefix, tk.stdout.get())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A task under its shim is checkpointed lazily, with TLS: the checkpoint
// holds no memory, the source is paused while its page server waits; the
// destination, from the checkpoint laid out as the driver does, restores
// it under a new shim with the lazy-pages daemon, which gets every page;
// the source, finished, is gone (its shim reports it killed); the
// restored task counts on with its memory intact.
func TestCreateLazyRoundTrip(t *testing.T) {
	requireCriu(t)
	lazyPipes(t)
	lower := newImage(t)
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	taskDir := newTaskDir(t, lower, "sh", "-c", lazyCounterScript)
	conf := filepath.Join(taskDir, CriuConfigName)
	annotate(t, taskDir, conf)
	tk := newTask(t, r, taskDir)
	tk.start("", nil)
	tk.waitCounts(3)
	startSum := tk.waitLinePrefix("start ")

	ca := testutil.NewCA(t)
	src, dst := ca.Node(t, "source", "127.0.0.1"), ca.Node(t, "destination", "127.0.0.1")
	addr := freePort(t)
	dir := filepath.Join(t.TempDir(), "ckpt")
	ld, err := CreateLazy(ctx, r, tk.id, tk.dir, dir, testMeta(), Options{}, nil, addr,
		&runc.CriuTLS{CA: ca.File, Cert: src.CertFile, Key: src.KeyFile}, testutil.Logger(t, hclog.Debug))
	must.NoError(t, err)
	t.Cleanup(ld.Abort)
	m := ld.Manifest
	t.Logf("lazy checkpoint: %d files, %d bytes, dump %s, pack %s", len(m.Files), m.Bytes, m.DumpDuration, m.PackDuration)
	must.True(t, m.Options.LazyPages)
	must.Less(t, int64(4<<20), m.Bytes) // no memory in it
	must.FileNotExists(t, conf)
	st, err := r.State(ctx, tk.id)
	must.NoError(t, err)
	must.Eq(t, runc.StatusPaused, st.Status)
	read, err := verify(dir)
	must.NoError(t, err)
	must.True(t, read.Options.LazyPages)

	// The destination, as the driver lays it out. Another node would use
	// the same cgroup; here the source holds it until every page is
	// served.
	opts := m.RestoreOptions(false)
	must.True(t, opts.LazyPages)
	taskDir2 := copyTaskDir(t, dir, lower, opts)
	work := filepath.Join(taskDir2, "restore")
	must.NoError(t, os.Mkdir(work, 0o700))
	d, err := StartLazyPages(ctx, LazyPagesOptions{
		CriuPath: "criu", ImagesDir: ImagesDir(dir), WorkDir: work, Source: addr,
		TLS: &runc.CriuTLS{CA: ca.File, Cert: dst.CertFile, Key: dst.KeyFile},
	})
	must.NoError(t, err)
	t.Cleanup(d.Stop)
	second := newTask(t, r, taskDir2)
	second.startIn(ImagesDir(dir), work, runc.RestoreArgs(opts))
	_, err = d.Guard()
	must.NoError(t, err)
	p, err := d.Result()
	must.NoError(t, err)
	d.Release()
	t.Logf("pages: %+v", p)

	must.NoError(t, ld.Finish(ctx))
	must.Eq(t, 9, tk.wait().Signal)
	tk.gone()
	before := tk.counts()
	got := second.waitCounts(3)
	must.Greater(t, before[len(before)-1], got[0])
	must.Less(t, before[len(before)-1]+3, got[0], must.Sprint("the counter restarted rather than resumed"))
	must.NoError(t, r.Kill(ctx, second.id, syscall.SIGUSR1, false))
	must.Eq(t, startSum, second.waitLinePrefix("check "))
}
