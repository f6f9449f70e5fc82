package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate/nomadtest"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// TestSweepPeriodicRecords: against a real Nomad agent, the periodic
// records of an allocation that runs stay; those of a stopped job's
// allocation, and of one Nomad does not know, go with their copies in the
// shared checkpoint_dir; copies no record names go once old.
func TestSweepPeriodicRecords(t *testing.T) {
	w := newReapWorld(t)
	agent := nomadtest.Start(t)
	w.env.nomad = agent.Client
	w.env.shared = true
	w.env.checkpoints = t.TempDir()
	d := &Driver{tasks: task.NewStore(), ctx: w.ctx, logger: testutil.Logger(t, hclog.Off)}

	sleeper := func(id string) *nomadapi.Allocation {
		job := nomadapi.NewServiceJob(id, id, "global", 50)
		job.Datacenters = []string{"*"}
		tg := nomadapi.NewTaskGroup("g", 1)
		tk := nomadapi.NewTask("t", "raw_exec")
		tk.Config = map[string]any{"command": "/bin/sleep", "args": []string{"300"}}
		tk.Resources = &nomadapi.Resources{CPU: new(int), MemoryMB: new(int)}
		*tk.Resources.CPU, *tk.Resources.MemoryMB = 20, 16
		job.AddTaskGroup(tg.AddTask(tk))
		_, _, err := agent.Client.Jobs().Register(job, nil)
		must.NoError(t, err)
		var a *nomadapi.Allocation
		must.Wait(t, wait.InitialSuccess(wait.Timeout(time.Minute), wait.Gap(200*time.Millisecond), wait.BoolFunc(func() bool {
			stubs, _, err := agent.Client.Jobs().Allocations(id, false, nil)
			if err != nil || len(stubs) == 0 || stubs[0].ClientStatus != nomadapi.AllocClientStatusRunning {
				return false
			}
			a, _, err = agent.Client.Allocations().Info(stubs[0].ID, nil)
			return err == nil
		})))
		return a
	}
	record := func(allocID string) string {
		must.NoError(t, w.env.catalog.PutPeriodic(w.ctx, &catalog.Periodic{AllocID: allocID, Task: "t", Namespace: "default",
			Checkpoints: []catalog.PeriodicCheckpoint{{Name: "20261206T140211.000Z", Copies: []catalog.Copy{{Where: catalog.CopySharedDir}}}}}))
		dir, err := w.env.periodicCopies(allocID, "t")
		must.NoError(t, err)
		must.NoError(t, os.MkdirAll(filepath.Join(dir, "20261206T140211.000Z"), 0o700))
		return dir
	}

	running := sleeper("runs")
	stopped := sleeper("stopped")
	t.Cleanup(func() {
		// Nomad unmounts an allocation's secrets once it is purged: before
		// the agent stops, so that its data directory can go.
		for _, id := range []string{"runs", "stopped"} {
			_, _, _ = agent.Client.Jobs().Deregister(id, true, nil)
		}
		must.Wait(t, wait.InitialSuccess(wait.Timeout(time.Minute), wait.Gap(200*time.Millisecond), wait.BoolFunc(func() bool {
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			return err == nil && !strings.Contains(string(mounts), running.ID) && !strings.Contains(string(mounts), stopped.ID)
		})))
	})
	_, _, err := agent.Client.Jobs().Deregister("stopped", false, nil)
	must.NoError(t, err)
	runningCopies, stoppedCopies := record(running.ID), record(stopped.ID)
	unknownCopies := record("0000dead-0000-4000-8000-000000000000")

	// Copies no record names: an old one goes, a recent one stays (its
	// record may not be written yet).
	orphan := func(alloc string, age time.Duration) string {
		dir, err := w.env.periodicCopies(alloc, "t")
		must.NoError(t, err)
		must.NoError(t, os.MkdirAll(filepath.Join(dir, "20261206T140211.000Z"), 0o700))
		at := time.Now().Add(-age)
		must.NoError(t, os.Chtimes(dir, at, at))
		return dir
	}
	oldOrphan := orphan("0000beef-0000-4000-8000-000000000000", 2*time.Hour)
	newOrphan := orphan("0000cafe-0000-4000-8000-000000000000", time.Minute)

	must.Eq(t, 2, d.sweepPeriodicRecords(w.ctx, w.env, defaultCheckpointReap(), testutil.Logger(t, hclog.Debug)))
	_, err = w.env.catalog.GetPeriodic(w.ctx, running.ID, "t")
	must.NoError(t, err)
	must.True(t, present(runningCopies))
	for _, id := range []string{stopped.ID, "0000dead-0000-4000-8000-000000000000"} {
		_, err = w.env.catalog.GetPeriodic(w.ctx, id, "t")
		must.ErrorIs(t, err, catalog.ErrNotFound)
	}
	must.False(t, present(oldOrphan))
	must.True(t, present(newOrphan))
	must.False(t, present(stoppedCopies))
	must.False(t, present(unknownCopies))
}
