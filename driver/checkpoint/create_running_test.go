package checkpoint

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// A running task is checkpointed as a periodic checkpoint is: paused by
// the caller, dumped and packed, then resumed before its files are read.
// It runs on; a copy restored from the checkpoint resumes its count from
// the checkpoint's moment, and the file the task writes on every count is
// in the checkpoint's rootfs as it was at that moment: memory and files
// agree.
func TestCreateRunningRoundTrip(t *testing.T) {
	requireCriu(t)
	lower := newImage(t)
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	taskDir := newTaskDir(t, lower, "sh", "-c", `i=0; while true; do i=$((i+1)); echo $i > /count; echo "count $i"; sleep 0.05; done`)
	tk := newTask(t, r, taskDir)
	tk.start("", nil)
	tk.waitCounts(5)

	must.NoError(t, r.Pause(ctx, tk.id))
	resumed := false
	dir := filepath.Join(t.TempDir(), "ckpt")
	created, err := CreateRunning(ctx, r, tk.id, tk.dir, dir, testMeta(), Options{}, func() {
		st, err := r.State(ctx, tk.id)
		must.NoError(t, err)
		must.Eq(t, runc.StatusPaused, st.Status, must.Sprint("CRIU leaves the paused task paused"))
		_, err = os.Stat(filepath.Join(dir, RootfsName))
		must.NoError(t, err, must.Sprint("the rootfs is packed before the task runs again"))
		must.NoError(t, r.Resume(ctx, tk.id))
		resumed = true
	}, testutil.Logger(t, hclog.Debug))
	must.NoError(t, err)
	must.True(t, resumed)
	must.True(t, created.Options.LeaveRunning)
	_, err = verify(dir)
	must.NoError(t, err)
	before := len(tk.counts())
	tk.waitCounts(before + 5)
	tk.running()

	// A copy restored from it, beside the task, which still runs.
	opts := created.RestoreOptions(false)
	taskDir2 := copyTaskDir(t, dir, lower, opts)
	data, err := os.ReadFile(filepath.Join(taskDir2, "upper", "count"))
	must.NoError(t, err)
	atCheckpoint, err := strconv.Atoi(strings.TrimSpace(string(data)))
	must.NoError(t, err)
	second := newTask(t, r, taskDir2)
	second.start(ImagesDir(dir), runc.RestoreArgs(opts))
	got := second.waitCounts(3)
	t.Logf("rootfs at the checkpoint: count %d; the copy goes on from %d", atCheckpoint, got[0])
	must.True(t, got[0] == atCheckpoint || got[0] == atCheckpoint+1,
		must.Sprintf("the copy counts on from %d, its rootfs says %d: memory and files of different moments", got[0], atCheckpoint))
}
