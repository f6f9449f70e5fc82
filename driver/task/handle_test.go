package task

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// A task vacated (a lazy move's source) is ended for Nomad at once, with
// the result given, while its container runs on under its shim; its log
// FIFO ends for its reader (Nomad's log collector waits for that); Gone
// closes when the container really exits, whose result does not replace
// the one Nomad got.
func TestHandleVacate(t *testing.T) {
	runctest.Require(t)
	b := runctest.NewBundle(t, "sh", "-c", "while :; do echo tick; sleep 0.05; done")
	r := &runc.Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	runctest.Cleanup(t, r.Root, b.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fifo := filepath.Join(t.TempDir(), "stdout.fifo")
	must.NoError(t, unix.Mkfifo(fifo, 0o600))
	logs, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0)
	must.NoError(t, err)
	defer logs.Close()
	ended := make(chan int, 1) // bytes read when the FIFO ended
	go func() {
		n, buf := 0, make([]byte, 4096)
		for {
			k, err := logs.Read(buf)
			n += k
			if err != nil && n > 0 {
				ended <- n
				return
			}
			if err != nil {
				time.Sleep(20 * time.Millisecond) // no writer yet
			}
		}
	}()
	proc, err := shim.Start(ctx, os.Args[0], t.TempDir(), shim.Config{
		ID: b.ID, Bundle: b.Dir, RuncPath: r.Path, RuncRoot: r.Root, Mode: shim.ModeRun, StdoutPath: fifo,
	})
	must.NoError(t, err)
	h := NewHandle(&drivers.TaskConfig{ID: "t1", Name: "app"}, State{ContainerID: b.ID}, proc, testutil.Logger(t, hclog.Debug))
	must.True(t, h.Running())
	select {
	case n := <-ended:
		t.Fatalf("log FIFO ended after %d bytes while the task runs", n)
	case <-time.After(500 * time.Millisecond):
	}

	h.Vacate(&drivers.ExitResult{ExitCode: 0})
	select {
	case n := <-ended:
		must.Positive(t, n)
	case <-time.After(time.Second):
		t.Fatal("log FIFO still open for writing after Vacate")
	}
	must.False(t, h.Running())
	must.True(t, h.Vacated())
	must.Eq(t, 0, h.ExitResult().ExitCode)
	select {
	case <-h.Gone():
		t.Fatal("gone while its container runs")
	case <-time.After(200 * time.Millisecond):
	}
	st, err := r.State(ctx, b.ID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusRunning, st.Status)

	must.NoError(t, r.Kill(ctx, b.ID, 9, false))
	select {
	case <-h.Gone():
	case <-ctx.Done():
		t.Fatal("not gone after its container was killed")
	}
	must.Eq(t, 0, h.ExitResult().ExitCode, must.Sprint("the result Nomad got stays"))
	must.Eq(t, 0, h.ExitResult().Signal)
	h.Release()
}
