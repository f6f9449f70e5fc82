package plugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/plugins/drivers"
	dtestutil "github.com/hashicorp/nomad/plugins/drivers/testutils"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
	"golang.org/x/sys/unix"
)

// runLoop starts a task that runs until SIGTERM and returns its state.
func runLoop(t *testing.T, h *dtestutil.DriverHarness) (*drivers.TaskHandle, task.State) {
	t.Helper()
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `trap 'exit 0' TERM; while true; do sleep 0.1; done`}})
	handle := startTask(t, h, cfg)
	var st task.State
	must.NoError(t, handle.GetDriverState(&st))
	return handle, st
}

// secondDriver is another driver instance on the directories of conf, as
// after a restart of the Nomad client: it tracks only the tasks it recovers
// or starts.
func secondDriver(t *testing.T, conf *Config, creationGrace string, dryRun bool) (*dtestutil.DriverHarness, *Driver) {
	t.Helper()
	h, _ := newHarness(t, func(c *Config) {
		*c = *conf
		// Enabled, but its timer never fires during the test: the tests
		// run passes themselves.
		c.GC.DanglingContainers = DanglingConfig{Enabled: true, Period: "1h", CreationGrace: creationGrace, DryRun: dryRun}
	})
	return h, h.Impl().(*Driver)
}

func runcState(t *testing.T, d *Driver, cid string) (*runc.State, error) {
	t.Helper()
	_, env, err := d.current()
	must.NoError(t, err)
	return env.runc.State(context.Background(), cid)
}

func requireRunning(t *testing.T, d *Driver, st task.State) {
	t.Helper()
	s, err := runcState(t, d, st.ContainerID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusRunning, s.Status)
	for _, dir := range []string{st.Dir, st.ShimDir} {
		_, err := os.Stat(dir)
		must.NoError(t, err)
	}
}

func requireGone(t *testing.T, path string) {
	t.Helper()
	_, err := os.Lstat(path)
	must.True(t, errors.Is(err, os.ErrNotExist), must.Sprintf("%s left behind (%v)", path, err))
}

func TestReconcileDangling_RemovesLeftBehind(t *testing.T) {
	h1, conf := newHarness(t, nil)
	handle, st := runLoop(t, h1)
	_, d2 := secondDriver(t, conf, "0s", false)

	// A symlink inside the task directory leads out of it: what it points
	// to stays.
	outside := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(outside, "keep"), nil, 0o600))
	must.NoError(t, os.Symlink(outside, filepath.Join(st.Dir, "upper", "escape")))
	// A task directory left by a start that never got its container.
	stray := filepath.Join(conf.DataDir, "tasks", "stray-task")
	must.NoError(t, os.MkdirAll(filepath.Join(stray, "upper"), 0o700))
	// Checkpoints are the companion's.
	checkpoint := filepath.Join(conf.DataDir, "checkpoints", "some-alloc", "web")
	must.NoError(t, os.MkdirAll(checkpoint, 0o700))

	must.Eq(t, []string{st.ContainerID, "stray-task"}, d2.reconcileDangling(context.Background()))

	_, err := runcState(t, d2, st.ContainerID)
	must.ErrorIs(t, err, runc.ErrNotExist)
	must.ErrorIs(t, unix.Kill(st.ContainerPID, 0), unix.ESRCH)
	requireGone(t, st.Dir)
	requireGone(t, st.ShimDir)
	requireGone(t, stray)
	_, err = os.Stat(filepath.Join(outside, "keep"))
	must.NoError(t, err)
	_, err = os.Stat(checkpoint)
	must.NoError(t, err)
	must.SliceEmpty(t, d2.reconcileDangling(context.Background()), must.Sprint("a second pass found more"))

	// The driver that started the task sees it end.
	res := waitExit(t, h1, handle.Config.ID, 10*time.Second)
	must.Eq(t, 0, res.ExitCode)
}

func TestReconcileDangling_DryRun(t *testing.T) {
	h1, conf := newHarness(t, nil)
	_, st := runLoop(t, h1)
	_, d2 := secondDriver(t, conf, "0s", true)

	must.Eq(t, []string{st.ContainerID}, d2.reconcileDangling(context.Background()))
	requireRunning(t, d2, st)
}

func TestReconcileDangling_TrackedTasksStay(t *testing.T) {
	h1, conf := newHarness(t, nil)
	recovered, stRecovered := runLoop(t, h1)
	// One task a harness: its alloc dir cleanup closes its client.
	h3, _ := newHarness(t, func(c *Config) { *c = *conf })
	_, stStarting := runLoop(t, h3)
	h2, d2 := secondDriver(t, conf, "0s", false)

	must.NoError(t, h2.RecoverTask(recovered))
	_, stOwn := runLoop(t, h2)
	// A task being started or recovered is tracked before it is in the
	// task store.
	done := d2.tracked.begin(stStarting.ContainerID)

	must.SliceEmpty(t, d2.reconcileDangling(context.Background()))
	for _, st := range []task.State{stRecovered, stStarting, stOwn} {
		requireRunning(t, d2, st)
	}

	// Once its start is over without it being stored, it is dangling.
	done()
	must.Eq(t, []string{stStarting.ContainerID}, d2.reconcileDangling(context.Background()))
	requireGone(t, stStarting.Dir)
	requireRunning(t, d2, stRecovered)
	requireRunning(t, d2, stOwn)
}

func TestReconcileDangling_CreationGrace(t *testing.T) {
	h1, conf := newHarness(t, nil)
	_, st := runLoop(t, h1)
	_, d2 := secondDriver(t, conf, "1h", false)

	must.SliceEmpty(t, d2.reconcileDangling(context.Background()))
	requireRunning(t, d2, st)
}

func TestReconcileDangling_RunsEveryPeriod(t *testing.T) {
	h1, conf := newHarness(t, nil)
	_, st := runLoop(t, h1)
	h2, _ := newHarness(t, func(c *Config) {
		*c = *conf
		c.GC.DanglingContainers = DanglingConfig{Enabled: true, Period: "1s", CreationGrace: "0s"}
	})
	// Not before a period has passed since the driver started.
	requireRunning(t, h2.Impl().(*Driver), st)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		_, err := os.Lstat(st.ShimDir)
		return errors.Is(err, os.ErrNotExist)
	}), wait.Timeout(15*time.Second), wait.Gap(100*time.Millisecond)))
	requireGone(t, st.Dir)
}

// A start or recovery of a container being removed waits for the removal,
// and a container being started is never claimed.
func TestTracking(t *testing.T) {
	var tr tracking
	none := func() map[string]bool { return map[string]bool{} }
	stored := func() map[string]bool { return map[string]bool{"stored": true} }

	_, ok := tr.claim("stored", stored)
	must.False(t, ok)
	done := tr.begin("a")
	_, ok = tr.claim("a", none)
	must.False(t, ok)
	must.Eq(t, map[string]bool{"a": true, "stored": true}, tr.tracked(stored))
	done()

	release, ok := tr.claim("a", none)
	must.True(t, ok)
	_, ok = tr.claim("a", none)
	must.False(t, ok, must.Sprint("claimed twice"))
	begun := make(chan func())
	go func() { begun <- tr.begin("a") }()
	select {
	case <-begun:
		t.Fatal("a start went ahead while its container was being removed")
	case <-time.After(100 * time.Millisecond):
	}
	release()
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		select {
		case done := <-begun:
			done()
			return true
		default:
			return false
		}
	}), wait.Timeout(5*time.Second), wait.Gap(10*time.Millisecond)))
}

func TestDanglingConfigDefaults(t *testing.T) {
	dangling := DanglingConfig{Enabled: true, Period: "5m", CreationGrace: "5m"}
	checkpoints := CheckpointsGC{Stale: "1h", Unclaimed: "24h", Failed: "168h", Orphan: "1h"}
	cases := []struct {
		config string
		want   GCConfig
	}{
		{`{}`, GCConfig{Image: true, ImageDelay: "3m", DanglingContainers: dangling, Checkpoints: checkpoints}},
		{`{ gc { image = false } }`, GCConfig{ImageDelay: "3m", DanglingContainers: dangling, Checkpoints: checkpoints}},
		{`{ gc { dangling_containers {} } }`, GCConfig{Image: true, ImageDelay: "3m", DanglingContainers: dangling, Checkpoints: checkpoints}},
		{`{ gc { dangling_containers { dry_run = true } } }`, GCConfig{Image: true, ImageDelay: "3m",
			DanglingContainers: DanglingConfig{Enabled: true, Period: "5m", CreationGrace: "5m", DryRun: true}, Checkpoints: checkpoints}},
		{`{ gc { dangling_containers { enabled = false, period = "1m", creation_grace = "10m" } } }`, GCConfig{Image: true, ImageDelay: "3m",
			DanglingContainers: DanglingConfig{Period: "1m", CreationGrace: "10m"}, Checkpoints: checkpoints}},
	}
	for _, c := range cases {
		var conf Config
		hclutils.NewConfigParser(configSpec).ParseHCL(t, "config "+c.config, &conf)
		must.Eq(t, c.want, conf.GC, must.Sprint(c.config))
	}
}

func TestDanglingConfigValidate(t *testing.T) {
	valid := func(dc DanglingConfig) *Config {
		return &Config{RuncPath: "runc", CriuPath: "criu", DataDir: "/var/lib/ferry", StateDir: "/run/ferry",
			GC: GCConfig{ImageDelay: "3m", DanglingContainers: dc}}
	}
	cases := []struct {
		dc   DanglingConfig
		want string
	}{
		{DanglingConfig{Period: "x"}, `gc.dangling_containers.period: "x" is not a duration; use a value such as "5m"`},
		{DanglingConfig{Period: "0s"}, `gc.dangling_containers.period: "0s" must be positive`},
		{DanglingConfig{CreationGrace: "soon"}, `gc.dangling_containers.creation_grace: "soon" is not a duration; use a value such as "5m"`},
		{DanglingConfig{CreationGrace: "-1m"}, `gc.dangling_containers.creation_grace: "-1m" must not be negative`},
	}
	for _, c := range cases {
		must.ErrorContains(t, valid(c.dc).validate(), c.want)
	}

	conf := valid(DanglingConfig{Period: "30s", CreationGrace: "0s"})
	must.NoError(t, conf.validate())
	must.Eq(t, 30*time.Second, conf.GC.DanglingContainers.period)
	must.Eq(t, time.Duration(0), conf.GC.DanglingContainers.creationGrace)

	conf = valid(DanglingConfig{})
	must.NoError(t, conf.validate())
	must.Eq(t, defaultDanglingPeriod, conf.GC.DanglingContainers.period)
	must.Eq(t, defaultDanglingCreationGrace, conf.GC.DanglingContainers.creationGrace)
}
