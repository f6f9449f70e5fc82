package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	dtestutil "github.com/hashicorp/nomad/plugins/drivers/testutils"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// testEnv is a loopback registry holding a busybox image, shared by the
// tests of this package.
type testEnv struct {
	registry string
	image    string
}

var (
	envOnce sync.Once
	env     testEnv
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the ferry driver runs containers with runc and needs root")
	}
}

func setupRegistry(t *testing.T) testEnv {
	t.Helper()
	envOnce.Do(func() {
		// The registry outlives this test: it serves the whole package.
		reg := testutil.StartRegistry(&noCleanupTB{TB: t})
		img := testutil.BusyboxImage(t, v1.Platform{OS: "linux", Architecture: "amd64"})
		ref := reg + "/ferry/busybox:1"
		testutil.PushImage(t, img, ref)
		env = testEnv{registry: reg, image: ref}
	})
	if env.registry == "" {
		t.Fatal("test registry is not available")
	}
	return env
}

// noCleanupTB drops cleanups so a resource can outlive the test that made it.
type noCleanupTB struct{ testing.TB }

func (noCleanupTB) Cleanup(func()) {}

// newHarness returns a configured driver behind Nomad's plugin harness.
func newHarness(t *testing.T, mutate func(*Config)) (*dtestutil.DriverHarness, *Config) {
	t.Helper()
	requireRoot(t)
	e := setupRegistry(t)
	dir := t.TempDir()
	cfg := &Config{
		RuncPath:           "runc",
		CriuPath:           "criu",
		DataDir:            filepath.Join(dir, "data"),
		StateDir:           filepath.Join(dir, "state"),
		InsecureRegistries: []string{e.registry},
		GC:                 GCConfig{Image: true, ImageDelay: "1s"},
	}
	if mutate != nil {
		mutate(cfg)
	}
	d := New(testutil.Logger(t, hclog.Debug))
	h := dtestutil.NewDriverHarness(t, d)
	var data []byte
	must.NoError(t, base.MsgPackEncode(&data, cfg))
	must.NoError(t, h.SetConfig(&base.Config{PluginConfig: data}))
	t.Cleanup(d.Shutdown)
	return h, cfg
}

// newTask is a task with a 128 MiB memory limit running the given command.
func newTask(t *testing.T, tc TaskConfig) *drivers.TaskConfig {
	t.Helper()
	allocID := uuid.Generate()
	cfg := &drivers.TaskConfig{
		ID:      fmt.Sprintf("%s/web/%s", allocID, uuid.Generate()[:8]),
		AllocID: allocID,
		Name:    "web",
		JobName: "test",
		Env:     map[string]string{"FERRY_TEST": "yes"},
		Resources: &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{
				Memory: structs.AllocatedMemoryResources{MemoryMB: 128},
				Cpu:    structs.AllocatedCpuResources{CpuShares: 100},
			},
			LinuxResources: &drivers.LinuxResources{
				CPUShares:        100,
				MemoryLimitBytes: 128 * 1024 * 1024,
			},
		},
	}
	if tc.PullTimeout == "" {
		tc.PullTimeout = "1m"
	}
	must.NoError(t, cfg.EncodeConcreteDriverConfig(&tc))
	return cfg
}

func startTask(t *testing.T, h *dtestutil.DriverHarness, cfg *drivers.TaskConfig) *drivers.TaskHandle {
	t.Helper()
	cleanup := h.MkAllocDir(cfg, true)
	t.Cleanup(cleanup)
	handle, _, err := h.StartTask(cfg)
	must.NoError(t, err)
	t.Cleanup(func() { _ = h.DestroyTask(cfg.ID, true) })
	return handle
}

func waitExit(t *testing.T, h *dtestutil.DriverHarness, id string, timeout time.Duration) *drivers.ExitResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ch, err := h.WaitTask(ctx, id)
	must.NoError(t, err)
	select {
	case res := <-ch:
		must.NotNil(t, res, must.Sprint("task did not exit in time"))
		return res
	case <-ctx.Done():
		t.Fatalf("task %s did not exit within %s", id, timeout)
		return nil
	}
}

func readLog(t *testing.T, cfg *drivers.TaskConfig, stream string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(cfg.TaskDir().LogDir, fmt.Sprintf("%s.%s.0", cfg.Name, stream)))
	return string(b)
}

func TestDriver_Fingerprint(t *testing.T) {
	h, _ := newHarness(t, nil)
	ch, err := h.Fingerprint(context.Background())
	must.NoError(t, err)
	fp := <-ch
	must.Eq(t, drivers.HealthStateHealthy, fp.Health, must.Sprint(fp.HealthDescription))
	v, ok := fp.Attributes[sdk.AttrRuncVersion].GetString()
	must.True(t, ok)
	must.StrHasPrefix(t, "1.", v)
	p, _ := fp.Attributes[sdk.AttrPlatform].GetString()
	must.Eq(t, "linux/amd64", p)
	_, ok = fp.Attributes[sdk.AttrCheckpoint].GetBool()
	must.True(t, ok)
	// Whether lazy migration works here depends on fs.pipe-max-size
	// (checkpoint.TestLazySupport); the attribute is always there.
	_, ok = fp.Attributes[sdk.AttrCheckpointLazy].GetBool()
	must.True(t, ok)
}

func TestDriver_FingerprintRuncMissing(t *testing.T) {
	h, _ := newHarness(t, func(c *Config) { c.RuncPath = "/nonexistent/runc" })
	ch, err := h.Fingerprint(context.Background())
	must.NoError(t, err)
	fp := <-ch
	must.Eq(t, drivers.HealthStateUnhealthy, fp.Health)
	must.StrContains(t, fp.HealthDescription, "runc_path")
}

func TestDriver_RunLogsAndExitCode(t *testing.T) {
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{
		Image:   setupRegistry(t).image,
		Command: "/bin/sh",
		Args:    []string{"-c", `echo "out $FERRY_TEST $(id -u) $(pwd)"; echo err >&2; exit 3`},
	})
	startTask(t, h, cfg)
	res := waitExit(t, h, cfg.ID, 30*time.Second)
	must.Eq(t, 3, res.ExitCode)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "out yes 0 /") && strings.Contains(readLog(t, cfg, "stderr"), "err")
	}), wait.Timeout(10*time.Second), wait.Gap(100*time.Millisecond)))
}

func TestDriver_ExecConformance(t *testing.T) {
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "sleep", Args: []string{"1000"}})
	startTask(t, h, cfg)
	dtestutil.ExecTaskStreamingConformanceTests(t, h, cfg.ID)

	res, err := h.ExecTask(cfg.ID, []string{"/bin/sh", "-c", "echo $FERRY_TEST; exit 7"}, 10*time.Second)
	must.NoError(t, err)
	must.Eq(t, 7, res.ExitResult.ExitCode)
	must.Eq(t, "yes\n", string(res.Stdout))
}

func TestDriver_StopHonoursKillSignal(t *testing.T) {
	h, _ := newHarness(t, nil)
	script := `trap 'echo got USR1; exit 0' USR1; echo ready; while true; do sleep 0.1; done`
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", script}})
	startTask(t, h, cfg)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "ready")
	}), wait.Timeout(10*time.Second), wait.Gap(100*time.Millisecond)))

	start := time.Now()
	must.NoError(t, h.StopTask(cfg.ID, 10*time.Second, "SIGUSR1"))
	res := waitExit(t, h, cfg.ID, 15*time.Second)
	must.Eq(t, 0, res.ExitCode)
	must.Less(t, 5*time.Second, time.Since(start))
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "got USR1")
	}), wait.Timeout(5*time.Second), wait.Gap(100*time.Millisecond)))
}

func TestDriver_StopKillsAfterTimeout(t *testing.T) {
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `trap '' TERM; while true; do sleep 0.1; done`}})
	startTask(t, h, cfg)
	time.Sleep(300 * time.Millisecond)
	must.NoError(t, h.StopTask(cfg.ID, time.Second, "SIGTERM"))
	res := waitExit(t, h, cfg.ID, 10*time.Second)
	must.Eq(t, 9, res.Signal)
}

func TestDriver_SignalTask(t *testing.T) {
	h, _ := newHarness(t, nil)
	script := `trap 'echo got HUP' HUP; echo ready; while true; do sleep 0.1; done`
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", script}})
	startTask(t, h, cfg)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "ready")
	}), wait.Timeout(10*time.Second), wait.Gap(100*time.Millisecond)))
	must.NoError(t, h.SignalTask(cfg.ID, "SIGHUP"))
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "got HUP")
	}), wait.Timeout(10*time.Second), wait.Gap(100*time.Millisecond)))
	must.ErrorContains(t, h.SignalTask(cfg.ID, "SIGNOPE"), "unknown signal")
}

func TestDriver_OOMKilled(t *testing.T) {
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `x=$(yes | head -c 400000000); echo survived`}})
	startTask(t, h, cfg)
	res := waitExit(t, h, cfg.ID, 60*time.Second)
	must.True(t, res.OOMKilled, must.Sprintf("exit %+v", res))
}

func TestDriver_Stats(t *testing.T) {
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `while true; do :; done`}})
	startTask(t, h, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := h.TaskStats(ctx, cfg.ID, 500*time.Millisecond)
	must.NoError(t, err)
	var last *drivers.TaskResourceUsage
	for i := 0; i < 4; i++ {
		last = <-ch
		must.NotNil(t, last)
	}
	must.Positive(t, last.ResourceUsage.MemoryStats.Usage)
	must.Greater(t, 20.0, last.ResourceUsage.CpuStats.Percent)
}

func TestDriver_RecoverAfterRestart(t *testing.T) {
	h, cfgPlugin := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done`}})
	handle := startTask(t, h, cfg)

	// A second driver instance, as after a Nomad client restart, re-attaches.
	h2, _ := newHarness(t, func(c *Config) { *c = *cfgPlugin })
	must.NoError(t, h2.RecoverTask(handle))
	status, err := h2.InspectTask(cfg.ID)
	must.NoError(t, err)
	must.Eq(t, drivers.TaskStateRunning, status.State)

	var st task.State
	must.NoError(t, handle.GetDriverState(&st))
	must.NoError(t, h2.StopTask(cfg.ID, 5*time.Second, "SIGKILL"))
	res := waitExit(t, h2, cfg.ID, 10*time.Second)
	must.Eq(t, 9, res.Signal)
	must.NoError(t, h2.DestroyTask(cfg.ID, false))
	h2.Impl().(*Driver).cleanups.Wait()
	_, err = os.Stat(st.Dir)
	must.True(t, os.IsNotExist(err), must.Sprintf("task dir %s left behind", st.Dir))
	_, err = os.Stat(st.ShimDir)
	must.True(t, os.IsNotExist(err), must.Sprintf("shim dir %s left behind", st.ShimDir))
}

func TestDriver_BadInputs(t *testing.T) {
	reg := setupRegistry(t).registry
	cases := []struct {
		name string
		tc   TaskConfig
		want string
	}{
		{"bad reference", TaskConfig{Image: "Not A Ref!!"}, `image "Not A Ref!!"`},
		{"missing tag", TaskConfig{Image: reg + "/ferry/busybox:nope"}, "not found"},
		{"missing repository", TaskConfig{Image: reg + "/ferry/nothing:1"}, "not found"},
		{"unreachable registry", TaskConfig{Image: "127.0.0.1:1/ferry/busybox:1"}, "unreachable"},
		{"bad capability", TaskConfig{Image: reg + "/ferry/busybox:1", CapAdd: []string{"NET_ADMINN"}}, "cap_add"},
		{"relative work_dir", TaskConfig{Image: reg + "/ferry/busybox:1", WorkDir: "tmp"}, "work_dir"},
		{"bad volume", TaskConfig{Image: reg + "/ferry/busybox:1", Volumes: []string{"relative:/x"}}, "volumes"},
		{"unknown port", TaskConfig{Image: reg + "/ferry/busybox:1", Ports: []string{"http"}}, `ports: "http"`},
		{"bad pull_timeout", TaskConfig{Image: reg + "/ferry/busybox:1", PullTimeout: "soon"}, "pull_timeout"},
		{"command not in image", TaskConfig{Image: reg + "/ferry/busybox:1", Command: "/nope"}, "/nope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The harness's alloc dir cleanup closes its client: one harness a case.
			h, cfgPlugin := newHarness(t, nil)
			cfg := newTask(t, c.tc)
			cleanup := h.MkAllocDir(cfg, true)
			defer cleanup()
			_, _, err := h.StartTask(cfg)
			must.ErrorContains(t, err, c.want)
			entries, _ := os.ReadDir(filepath.Join(cfgPlugin.DataDir, "tasks"))
			must.SliceEmpty(t, entries, must.Sprint("a failed start left a task directory"))
			entries, _ = os.ReadDir(filepath.Join(cfgPlugin.StateDir, "shims"))
			must.SliceEmpty(t, entries, must.Sprint("a failed start left a shim directory"))

			// The driver stays healthy for other tasks.
			ch, err := h.Fingerprint(context.Background())
			must.NoError(t, err)
			must.Eq(t, drivers.HealthStateHealthy, (<-ch).Health)
		})
	}
}

// A task with checkpoint.interval is checkpointed while it runs, paused
// only for the dump and the pack, keeping the newest checkpoint.keep; it
// runs on, counting, and its checkpoints go with it.
func TestDriver_PeriodicCheckpoints(t *testing.T) {
	shared := t.TempDir()
	consulAddr := catalogtest.StartConsul(t)
	h, _ := newHarness(t, func(c *Config) {
		c.CheckpointDir = shared
		c.Consul.Address = consulAddr
	})
	tc := TaskConfig{Image: setupRegistry(t).image, Command: "/bin/sh", Args: []string{"-c", `i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done`}}
	tc.Checkpoint = Checkpoint{Enabled: true, Interval: "10s", Keep: 1}
	cfg := newTask(t, tc)
	events, err := h.TaskEvents(context.Background())
	must.NoError(t, err)
	startTask(t, h, cfg)
	d := h.Impl().(*Driver)
	root := filepath.Join(d.env.layout.periodic(), cfg.AllocID, cfg.Name)
	copies := filepath.Join(shared, periodicCopiesDir, cfg.AllocID, cfg.Name)
	ctx := context.Background()

	var taken []string
	deadline := time.After(40 * time.Second)
	for len(taken) < 2 {
		select {
		case ev := <-events:
			if strings.HasPrefix(ev.Message, "Periodic checkpoint failed") {
				t.Fatalf("periodic checkpoint: %s", ev.Message)
			}
			if strings.HasPrefix(ev.Message, "Periodic checkpoint:") {
				must.StrContains(t, ev.Message, "copied to the shared checkpoint_dir")
				for _, k := range []string{sdk.EventBytes, sdk.EventDumpMs, sdk.EventFrozenMs, sdk.EventCopyMs} {
					must.MapContainsKey(t, ev.Annotations, k)
				}
				taken = append(taken, ev.Message)
				// keep = 1 on the node, off it and in the record.
				for _, dir := range []string{root, copies} {
					entries, err := os.ReadDir(dir)
					must.NoError(t, err)
					must.Len(t, 1, entries, must.Sprintf("checkpoint.keep = 1 in %s", dir))
					_, err = os.Stat(filepath.Join(dir, entries[0].Name(), "manifest.json"))
					must.NoError(t, err)
				}
				rec, err := d.env.catalog.GetPeriodic(ctx, cfg.AllocID, cfg.Name)
				must.NoError(t, err)
				must.Len(t, 1, rec.Checkpoints)
				c := rec.Checkpoints[0]
				must.Eq(t, []catalog.Copy{{Where: catalog.CopySharedDir, Took: c.Copies[0].Took, CompletedAt: c.Copies[0].CompletedAt}}, c.Copies)
				copied, err := os.ReadDir(copies)
				must.NoError(t, err)
				must.Eq(t, c.Name, copied[0].Name())
				// The copy is the checkpoint the record names.
				_, err = checkpoint.Open(filepath.Join(copies, c.Name), c.ManifestSHA256, true)
				must.NoError(t, err)
			}
		case <-deadline:
			t.Fatalf("periodic checkpoints taken: %v", taken)
		}
	}
	t.Logf("%v", taken)
	status, err := h.InspectTask(cfg.ID)
	must.NoError(t, err)
	must.Eq(t, drivers.TaskStateRunning, status.State)
	before := strings.Count(readLog(t, cfg, "stdout"), "tick")
	time.Sleep(time.Second)
	must.Greater(t, before, strings.Count(readLog(t, cfg, "stdout"), "tick"), must.Sprint("the task runs on after its checkpoints"))

	must.NoError(t, h.StopTask(cfg.ID, 5*time.Second, "SIGKILL"))
	waitExit(t, h, cfg.ID, 10*time.Second)
	must.NoError(t, h.DestroyTask(cfg.ID, false))
	d.cleanups.Wait()
	for _, dir := range []string{root, copies} {
		_, err = os.Stat(dir)
		must.True(t, os.IsNotExist(err), must.Sprintf("periodic checkpoints %s left after the task", dir))
	}
	_, err = d.env.catalog.GetPeriodic(ctx, cfg.AllocID, cfg.Name)
	must.ErrorIs(t, err, catalog.ErrNotFound, must.Sprint("the periodic record left after the task"))
}
