package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/nomad/plugins/drivers"
	dtestutil "github.com/hashicorp/nomad/plugins/drivers/testutils"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// pushArchinfo pushes a one-layer image for linux/arch whose entrypoint is
// archinfo built for arch, and returns its reference.
func pushArchinfo(t *testing.T, arch string) string {
	t.Helper()
	b, err := os.ReadFile(archBinary(t, arch))
	must.NoError(t, err)
	tarball, err := testutil.Tar(testutil.TarEntry{Name: "archinfo", Mode: 0o755, Body: string(b)})
	must.NoError(t, err)
	layer, err := testutil.LayerFromBytes(tarball)
	must.NoError(t, err)
	img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: arch}, v1.Config{Entrypoint: []string{"/archinfo"}}, layer)
	must.NoError(t, err)
	ref := setupRegistry(t).registry + "/ferry/archinfo-" + arch + ":1"
	testutil.PushImage(t, img, ref)
	return ref
}

// taskEvents collects the messages of a task's events.
type taskEvents struct {
	mu   sync.Mutex
	msgs []string
}

func collectEvents(t *testing.T, h *dtestutil.DriverHarness, taskID string) *taskEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := h.TaskEvents(ctx)
	must.NoError(t, err)
	ev := &taskEvents{}
	go func() {
		for e := range ch {
			if e.TaskID == taskID {
				ev.mu.Lock()
				ev.msgs = append(ev.msgs, e.Message)
				ev.mu.Unlock()
			}
		}
	}()
	return ev
}

func (e *taskEvents) find(substr string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, m := range e.msgs {
		if strings.Contains(m, substr) {
			return m, true
		}
	}
	return "", false
}

func (e *taskEvents) all() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.msgs, "\n")
}

// startForeign starts archinfo for arch on a driver that chooses images for
// linux/arch, and returns the task's events and the start's error.
func startForeign(t *testing.T, arch string) (*drivers.TaskConfig, *dtestutil.DriverHarness, *taskEvents, error) {
	t.Helper()
	ref := pushArchinfo(t, arch)
	h, _ := newHarness(t, func(c *Config) { c.Platform = "linux/" + arch })
	cfg := newTask(t, TaskConfig{Image: ref})
	events := collectEvents(t, h, cfg.ID)
	cleanup := h.MkAllocDir(cfg, true)
	t.Cleanup(cleanup)
	_, _, err := h.StartTask(cfg)
	if err == nil {
		t.Cleanup(func() { _ = h.DestroyTask(cfg.ID, true) })
	}
	return cfg, h, events, err
}

func waitEvent(t *testing.T, events *taskEvents, substr string) string {
	t.Helper()
	var msg string
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		var ok bool
		msg, ok = events.find(substr)
		return ok
	}), wait.Timeout(10*time.Second), wait.Gap(50*time.Millisecond)), must.Sprintf("events:\n%s", events.all()))
	return msg
}

func TestDriver_EntrypointWithoutEmulator(t *testing.T) {
	requireRoot(t)
	arch := ""
	for _, a := range []string{"riscv64", "s390x", "ppc64le", "mips64le"} {
		if a == nodeArch {
			continue
		}
		if handlers, _ := loadBinfmt(binfmtDir); !anyMatches(t, handlers, a) {
			arch = a
			break
		}
	}
	if arch == "" {
		t.Skip("every candidate architecture has an emulator registered here")
	}
	cfg, h, events, err := startForeign(t, arch)
	msg := waitEvent(t, events, "Entrypoint /archinfo")
	must.Eq(t, `Entrypoint /archinfo is a linux/`+arch+` binary; this node is linux/`+nodeArch+` and has no binfmt_misc handler for it: the task will fail with "exec format error" (register an emulator such as qemu-user-static, or use the image for linux/`+nodeArch+`)`, msg)
	// And it does (the check never stops the start itself).
	if err != nil {
		must.StrContains(t, err.Error(), "exec format error")
		return
	}
	res := waitExit(t, h, cfg.ID, 30*time.Second)
	must.NotEq(t, 0, res.ExitCode)
}

func TestDriver_EntrypointUnderEmulation(t *testing.T) {
	requireRoot(t)
	arch := "arm64"
	if nodeArch == arch {
		arch = "amd64"
	}
	handlers, _ := loadBinfmt(binfmtDir)
	if !anyMatches(t, handlers, arch) {
		t.Skipf("no binfmt_misc handler for %s here", arch)
	}
	cfg, h, events, err := startForeign(t, arch)
	must.NoError(t, err)
	msg := waitEvent(t, events, "Entrypoint /archinfo")
	must.StrHasPrefix(t, "Entrypoint /archinfo is a linux/"+arch+" binary; this node is linux/"+nodeArch+" and runs it under emulation (binfmt_misc handler ", msg)
	res := waitExit(t, h, cfg.ID, 30*time.Second)
	must.Eq(t, 0, res.ExitCode)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		return strings.Contains(readLog(t, cfg, "stdout"), "arch "+arch)
	}), wait.Timeout(10*time.Second), wait.Gap(100*time.Millisecond)))
}

func TestDriver_NativeEntrypointNoEvent(t *testing.T) {
	requireRoot(t)
	h, _ := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{Image: pushArchinfo(t, nodeArch)})
	events := collectEvents(t, h, cfg.ID)
	startTask(t, h, cfg)
	res := waitExit(t, h, cfg.ID, 30*time.Second)
	must.Eq(t, 0, res.ExitCode)
	waitEvent(t, events, "Using image")
	_, found := events.find("Entrypoint")
	must.False(t, found, must.Sprintf("events:\n%s", events.all()))
}

// anyMatches reports whether a handler runs archinfo built for arch.
func anyMatches(t *testing.T, handlers []*binfmtEntry, arch string) bool {
	t.Helper()
	head := headOf(t, archBinary(t, arch))
	for _, h := range handlers {
		if h.matches("/archinfo", head) {
			return true
		}
	}
	return false
}

func TestDriver_TaskCannotChangeTheImageCache(t *testing.T) {
	h, conf := newHarness(t, nil)
	cfg := newTask(t, TaskConfig{
		Image:   setupRegistry(t).image,
		Command: "/bin/sh",
		Args:    []string{"-c", `echo intruder >> /etc/passwd && chmod 700 /bin/busybox && rm /etc/group && echo done`},
	})
	startTask(t, h, cfg)
	res := waitExit(t, h, cfg.ID, 30*time.Second)
	must.Eq(t, 0, res.ExitCode, must.Sprint(readLog(t, cfg, "stderr")))

	// Neither the image's rootfs nor the layers it is assembled from
	// changed.
	images := filepath.Join(conf.DataDir, "images")
	for _, pattern := range []string{"rootfs/sha256/*/etc/passwd", "layers/sha256/*/fs/etc/passwd"} {
		files, err := filepath.Glob(filepath.Join(images, pattern))
		must.NoError(t, err)
		must.NotEq(t, 0, len(files), must.Sprint(pattern))
		for _, f := range files {
			b, err := os.ReadFile(f)
			must.NoError(t, err)
			must.StrNotContains(t, string(b), "intruder")
			fi, err := os.Stat(filepath.Join(filepath.Dir(f), "../bin/busybox"))
			must.NoError(t, err)
			must.Eq(t, os.FileMode(0o755), fi.Mode().Perm())
			must.FileExists(t, filepath.Join(filepath.Dir(f), "group"))
		}
	}
}
