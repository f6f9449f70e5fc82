package runc

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/shoenig/test/must"
)

func TestCheckpointArgs(t *testing.T) {
	args, err := checkpointArgs("c1", CheckpointOptions{ImagePath: "/img"})
	must.NoError(t, err)
	must.Eq(t, []string{"checkpoint", "--image-path", "/img", "c1"}, args)

	args, err = checkpointArgs("c1", CheckpointOptions{
		ImagePath: "/img", WorkPath: "/work", LeaveRunning: true,
		TCPEstablished: true, FileLocks: true, ExtUnixSk: true, ShellJob: true,
		ManageCgroupsMode: "ignore",
	})
	must.NoError(t, err)
	must.Eq(t, []string{
		"checkpoint", "--image-path", "/img", "--work-path", "/work", "--leave-running",
		"--tcp-established", "--file-locks", "--ext-unix-sk", "--shell-job",
		"--manage-cgroups-mode", "ignore", "c1",
	}, args)

	_, err = checkpointArgs("", CheckpointOptions{ImagePath: "/img"})
	must.ErrorContains(t, err, "no container id")
	_, err = checkpointArgs("c1", CheckpointOptions{})
	must.ErrorContains(t, err, "no image path")
	_, err = checkpointArgs("c1", CheckpointOptions{ImagePath: "/img", ManageCgroupsMode: "some"})
	must.ErrorContains(t, err, `unknown cgroups mode "some"`)
}

func TestRestoreArgs(t *testing.T) {
	must.SliceEmpty(t, RestoreArgs(RestoreOptions{}))
	must.Eq(t, []string{"--tcp-established", "--file-locks", "--manage-cgroups-mode", "full"},
		RestoreArgs(RestoreOptions{TCPEstablished: true, FileLocks: true, ManageCgroupsMode: "full"}))
	// Closing wins over re-establishing; it has no runc flag.
	must.SliceEmpty(t, RestoreArgs(RestoreOptions{TCPEstablished: true, TCPClose: true}))
	must.Eq(t, "tcp-close\n", string(CriuConfig(RestoreOptions{TCPClose: true})))
	must.Nil(t, CriuConfig(RestoreOptions{TCPEstablished: true}))
}

func TestCriuLogTail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, DumpLog)
	must.Eq(t, "", CriuLogTail(p))

	must.NoError(t, os.WriteFile(p, []byte("(00.1) one\n(00.2) two\n\n(00.3) three\n"), 0o600))
	must.Eq(t, "(00.1) one | (00.2) two | (00.3) three", CriuLogTail(p))

	must.NoError(t, os.WriteFile(p, []byte(
		"(00.1) fine\n(00.2) Error (criu/sk-tcp.c:1): bad socket\n(00.3) more\n"+
			"(00.4) Error (criu/cr-dump.c:2): Dumping FAILED.\n(00.5) Unfreezing tasks\n"), 0o600))
	must.Eq(t, "(00.2) Error (criu/sk-tcp.c:1): bad socket | (00.4) Error (criu/cr-dump.c:2): Dumping FAILED.",
		CriuLogTail(p))
}

func requireCriu(t *testing.T) {
	t.Helper()
	runctest.Require(t)
	if _, err := exec.LookPath("criu"); err != nil {
		t.Skip("criu not found")
	}
}

func TestCheckpointNotExist(t *testing.T) {
	requireCriu(t)
	r := &Runc{Path: runctest.RuncPath(), Root: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := r.Checkpoint(ctx, "ferry-test-missing", CheckpointOptions{ImagePath: t.TempDir()})
	must.True(t, errors.Is(err, ErrNotExist), must.Sprintf("error: %v", err))
}

// A container holding an established TCP connection cannot be dumped
// without TCPEstablished: the dump fails, says why, and the container runs
// on.
func TestCheckpointFailureLeavesContainerRunning(t *testing.T) {
	requireCriu(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	b := runctest.NewBundle(t, "/bin/busybox", "nc", "127.0.0.1", strconv.Itoa(port))
	root := t.TempDir()
	runctest.RunDetached(t, root, b)
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the container did not connect")
	}

	r := &Runc{Path: runctest.RuncPath(), Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	images, work := t.TempDir(), t.TempDir()
	err = r.Checkpoint(ctx, b.ID, CheckpointOptions{ImagePath: images, WorkPath: work})
	must.Error(t, err)
	t.Logf("checkpoint error: %v", err)
	must.StrContains(t, err.Error(), "runc checkpoint "+b.ID)
	must.StrContains(t, err.Error(), DumpLog+": ")
	must.StrContains(t, err.Error(), "tcp-established")

	st, err := r.State(ctx, b.ID)
	must.NoError(t, err)
	must.Eq(t, StatusRunning, st.Status)
}

// With LeaveRunning the container runs on after a successful dump.
func TestCheckpointLeaveRunning(t *testing.T) {
	requireCriu(t)
	b := runctest.NewBundle(t, "sleep", "1000")
	root := t.TempDir()
	runctest.RunDetached(t, root, b)

	r := &Runc{Path: runctest.RuncPath(), Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	images, work := t.TempDir(), t.TempDir()
	err := r.Checkpoint(ctx, b.ID, CheckpointOptions{ImagePath: images, WorkPath: work, LeaveRunning: true})
	must.NoError(t, err)
	must.FileExists(t, filepath.Join(images, "inventory.img"))
	must.FileExists(t, filepath.Join(work, DumpLog))

	st, err := r.State(ctx, b.ID)
	must.NoError(t, err)
	must.Eq(t, StatusRunning, st.Status)
}
