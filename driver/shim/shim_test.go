package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

const counterScript = `i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done`

// env is one shim under test: a bundle, FIFOs standing in for Nomad's log
// FIFOs and a state directory.
type env struct {
	t        *testing.T
	bundle   *runctest.Bundle
	runcRoot string
	stateDir string
	stdout   string
	stderr   string
	runc     *runc.Runc
}

func newEnv(t *testing.T, args ...string) *env {
	t.Helper()
	runctest.Require(t)
	e := &env{
		t:        t,
		bundle:   runctest.NewBundle(t, args...),
		runcRoot: t.TempDir(),
		stateDir: t.TempDir(),
	}
	fifoDir := t.TempDir()
	e.stdout = filepath.Join(fifoDir, "stdout.fifo")
	e.stderr = filepath.Join(fifoDir, "stderr.fifo")
	must.NoError(t, unix.Mkfifo(e.stdout, 0o600))
	must.NoError(t, unix.Mkfifo(e.stderr, 0o600))
	e.runc = &runc.Runc{Path: runctest.RuncPath(), Root: e.runcRoot}
	runctest.Cleanup(t, e.runcRoot, e.bundle.ID)
	return e
}

func (e *env) config() Config {
	return Config{
		ID:         e.bundle.ID,
		Bundle:     e.bundle.Dir,
		RuncPath:   runctest.RuncPath(),
		RuncRoot:   e.runcRoot,
		StdoutPath: e.stdout,
		StderrPath: e.stderr,
		Mode:       ModeRun,
	}
}

// start starts the shim and makes sure it is gone at the end of the test.
func (e *env) start(cfg Config) *Process {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, os.Args[0], e.stateDir, cfg)
	must.NoError(e.t, err)
	must.Positive(e.t, p.ContainerPID)
	cleanupShim(e.t, p)
	return p
}

func cleanupShim(t *testing.T, p *Process) {
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("FERRY_SHIM_LOG") != "" {
			data, _ := os.ReadFile(filepath.Join(p.StateDir, shimLogFile))
			t.Logf("shim.log:\n%s", tail(string(data), 40))
		}
		p.Ack()
		deadline := time.Now().Add(3 * time.Second)
		for p.Alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if p.Alive() {
			t.Logf("shim %d still alive, killing it", p.ShimPID)
			_ = syscall.Kill(p.ShimPID, syscall.SIGKILL)
		}
	})
}

func wait(t *testing.T, p *Process) *ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	must.NoError(t, err)
	return st
}

func waitGone(t *testing.T, p *Process) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Alive() {
		if time.Now().After(deadline) {
			t.Fatalf("shim %d did not exit", p.ShimPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fifoReader reads a FIFO like Nomad's log collector.
type fifoReader struct {
	mu    sync.Mutex
	lines []string
	f     *os.File
	done  chan struct{}
}

// readFIFO opens path for reading (blocking until a writer opens it) and
// collects lines until EOF or close. With reopen it opens the FIFO again
// after EOF, until close.
func readFIFO(t *testing.T, path string, reopen bool) *fifoReader {
	r := &fifoReader{done: make(chan struct{})}
	stop := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(r.done)
		for {
			f, err := os.Open(path)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.f = f
			r.mu.Unlock()
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
			if !reopen {
				return
			}
		}
	}()
	t.Cleanup(func() {
		once.Do(func() { close(stop) })
		r.close()
		// Unblock an open waiting for a writer.
		if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			_ = w.Close()
		}
	})
	return r
}

func (r *fifoReader) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		_ = r.f.Close()
	}
}

func (r *fifoReader) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

// waitLines waits until the reader has at least n lines.
func (r *fifoReader) waitLines(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := r.get()
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d lines, want %d: %q", len(lines), n, lines)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *fifoReader) waitEOF(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("FIFO reader did not reach EOF")
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s))
	must.NoError(t, err)
	return n
}

func TestShimOutputAndExitCode(t *testing.T) {
	e := newEnv(t, "sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3")
	stdout := readFIFO(t, e.stdout, false)
	stderr := readFIFO(t, e.stderr, false)
	p := e.start(e.config())

	st := wait(t, p)
	must.Eq(t, 3, st.ExitCode)
	must.Eq(t, 0, st.Signal)
	must.False(t, st.OOMKilled)
	must.Eq(t, "", st.Err)
	must.False(t, st.ExitedAt.IsZero())

	stdout.waitEOF(t)
	stderr.waitEOF(t)
	must.Eq(t, []string{"out1", "out2"}, stdout.get())
	must.Eq(t, []string{"err1", "err2"}, stderr.get())

	// The status is recorded before it is reported.
	rec, err := readExitStatus(e.stateDir)
	must.NoError(t, err)
	must.Eq(t, 3, rec.ExitCode)

	// The shim stays until acknowledged, then exits.
	must.True(t, p.Alive())
	p.Ack()
	waitGone(t, p)
	must.FileNotExists(t, filepath.Join(e.stateDir, socketFile))
}

func TestShimKilled(t *testing.T) {
	e := newEnv(t, "sleep", "1000")
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	// The shim is in its own session, apart from the test's.
	sid, err := unix.Getsid(p.ShimPID)
	must.NoError(t, err)
	must.Eq(t, p.ShimPID, sid)
	mySid, err := unix.Getsid(0)
	must.NoError(t, err)
	must.NotEq(t, mySid, sid)

	// The container's init is the shim's child.
	must.Eq(t, p.ShimPID, ppid(t, p.ContainerPID))

	ctx := context.Background()
	s, err := e.runc.State(ctx, e.bundle.ID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusRunning, s.Status)
	must.Eq(t, p.ContainerPID, s.Pid)

	must.NoError(t, e.runc.Kill(ctx, e.bundle.ID, syscall.SIGKILL, false))
	st := wait(t, p)
	must.Eq(t, 9, st.Signal)
	must.Eq(t, 137, st.ExitCode)
	must.False(t, st.OOMKilled)
}

func ppid(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	must.NoError(t, err)
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return atoi(t, fields[1])
}

func procExists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

func TestShimOOMKilled(t *testing.T) {
	e := newEnv(t, "sh", "-c", `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo survived`)
	limit := int64(32 << 20)
	e.bundle.Spec.Linux.Resources = &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit},
	}
	e.bundle.Write(t)
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	st := wait(t, p)
	must.Eq(t, 9, st.Signal)
	must.True(t, st.OOMKilled, must.Sprintf("status: %+v", st))
}

func TestShimReaderReconnects(t *testing.T) {
	e := newEnv(t, "sh", "-c", counterScript)
	first := readFIFO(t, e.stdout, false)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	lines := first.waitLines(t, 3)
	first.close()
	first.waitEOF(t)
	last := atoi(t, first.get()[len(first.get())-1])
	_ = lines

	// The collector is gone for a while; the container keeps running.
	time.Sleep(time.Second)
	second := readFIFO(t, e.stdout, false)
	got := second.waitLines(t, 3)
	must.Greater(t, last, atoi(t, got[0]))
	// Lines keep coming in order.
	for i := 1; i < len(got); i++ {
		must.Eq(t, atoi(t, got[i-1])+1, atoi(t, got[i]))
	}
	must.True(t, p.Alive())
	must.NoError(t, e.runc.Kill(context.Background(), e.bundle.ID, syscall.SIGKILL, false))
	must.Eq(t, 9, wait(t, p).Signal)
}

func TestShimOutlivesStarter(t *testing.T) {
	e := newEnv(t, "sleep", "1000")
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)

	req, err := json.Marshal(starterRequest{StateDir: e.stateDir, Config: e.config()})
	must.NoError(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), starterEnv+"="+string(req))
	out, err := cmd.Output()
	must.NoError(t, err, must.Sprintf("starter: %s", out))
	shimPid := atoi(t, string(out))

	// The starter is gone; a fresh handle finds the shim and container.
	p, err := Attach(e.stateDir)
	must.NoError(t, err)
	t.Cleanup(func() { runctest.Reap(shimPid) })
	cleanupShim(t, p)
	must.Eq(t, shimPid, p.ShimPID)
	must.True(t, p.Alive())
	must.Positive(t, p.ContainerPID)
	// The starter has exited; the shim was reparented.
	must.NotEq(t, cmd.Process.Pid, ppid(t, shimPid))
	must.False(t, procExists(cmd.Process.Pid))

	s, err := e.runc.State(context.Background(), e.bundle.ID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusRunning, s.Status)

	must.NoError(t, e.runc.Kill(context.Background(), e.bundle.ID, syscall.SIGKILL, false))
	st := wait(t, p)
	must.Eq(t, int(syscall.SIGKILL), st.Signal)
}

func TestShimAttachAfterExit(t *testing.T) {
	e := newEnv(t, "sh", "-c", "exit 7")
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	// Wait for the exit to be recorded without talking to the shim.
	deadline := time.Now().Add(10 * time.Second)
	for !fileExists(filepath.Join(e.stateDir, exitFile)) {
		if time.Now().After(deadline) {
			t.Fatal("exit status not recorded")
		}
		time.Sleep(20 * time.Millisecond)
	}

	a, err := Attach(e.stateDir)
	must.NoError(t, err)
	must.Eq(t, p.ShimPID, a.ShimPID)
	must.Eq(t, 7, wait(t, a).ExitCode)

	// Once the shim is gone the recorded status is still there.
	a.Ack()
	waitGone(t, p)
	b, err := Attach(e.stateDir)
	must.NoError(t, err)
	must.False(t, b.Alive())
	st := wait(t, b)
	must.Eq(t, 7, st.ExitCode)
	must.Eq(t, "", st.Err)
}

func TestShimGoneWithoutStatus(t *testing.T) {
	e := newEnv(t, "sleep", "1000")
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	must.NoError(t, syscall.Kill(p.ShimPID, syscall.SIGKILL))
	st := wait(t, p)
	must.Eq(t, errNoStatus, st.Err)

	// The orphaned container init is now the test's child.
	must.NoError(t, e.runc.Delete(context.Background(), e.bundle.ID, true))
	runctest.Reap(p.ContainerPID)

	waitGone(t, p)
	_, err := Attach(e.stateDir)
	must.Error(t, err)

	// A later Wait does not hang either.
	must.Eq(t, errNoStatus, wait(t, p).Err)
}

func TestShimStartFailure(t *testing.T) {
	e := newEnv(t, "/nope")
	readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Start(ctx, os.Args[0], e.stateDir, e.config())
	must.Error(t, err)
	must.StrContains(t, err.Error(), `exec: "/nope"`)
	must.StrContains(t, err.Error(), "no such file")
	t.Logf("start error: %v", err)

	_, err = e.runc.State(context.Background(), e.bundle.ID)
	must.True(t, errors.Is(err, runc.ErrNotExist), must.Sprintf("state: %v", err))
}

func TestStartValidates(t *testing.T) {
	ctx := context.Background()
	_, err := Start(ctx, os.Args[0], t.TempDir(), Config{})
	must.ErrorContains(t, err, "no container id")
	_, err = Start(ctx, os.Args[0], t.TempDir(), Config{ID: "x", Bundle: "/b", RuncPath: "runc", Mode: ModeRestore})
	must.ErrorContains(t, err, "image path")
	_, err = Start(ctx, os.Args[0], "/"+strings.Repeat("d", 120), Config{ID: "x", Bundle: "/b", RuncPath: "runc"})
	must.ErrorContains(t, err, "too long")
}

func TestShimCheckpointRestore(t *testing.T) {
	criu, err := exec.LookPath("criu")
	if err != nil {
		t.Skip("criu not found")
	}
	t.Logf("criu: %s", criu)
	e := newEnv(t, "sh", "-c", counterScript)
	stdout := readFIFO(t, e.stdout, true)
	readFIFO(t, e.stderr, true)
	p := e.start(e.config())

	stdout.waitLines(t, 5)

	images := t.TempDir()
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, runctest.RuncPath(), "--root", e.runcRoot,
		"checkpoint", "--image-path", images, "--work-path", work,
		"--leave-running=false", e.bundle.ID).CombinedOutput()
	if err != nil {
		dump, _ := os.ReadFile(filepath.Join(work, "dump.log"))
		t.Fatalf("runc checkpoint: %v: %s\ndump.log:\n%s", err, out, tail(string(dump), 40))
	}

	// The dumped container is gone; the shim reports it killed.
	st := wait(t, p)
	must.Eq(t, 9, st.Signal)
	p.Ack()
	waitGone(t, p)
	before := stdout.get()
	last := atoi(t, before[len(before)-1])

	restoreWork := t.TempDir()
	cfg := e.config()
	cfg.Mode = ModeRestore
	cfg.ImagePath = images
	cfg.WorkPath = restoreWork
	e.stateDir = t.TempDir()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	r, err := Start(rctx, os.Args[0], e.stateDir, cfg)
	if err != nil {
		restore, _ := os.ReadFile(filepath.Join(restoreWork, "restore.log"))
		t.Fatalf("restore: %v\nrestore.log:\n%s", err, tail(string(restore), 40))
	}
	cleanupShim(t, r)

	after := stdout.waitLines(t, len(before)+3)[len(before):]
	must.Greater(t, last, atoi(t, after[0]))
	t.Logf("last before checkpoint %d, first after restore %s", last, after[0])

	s, err := e.runc.State(ctx, e.bundle.ID)
	must.NoError(t, err)
	must.Eq(t, runc.StatusRunning, s.Status)
	must.Eq(t, r.ContainerPID, s.Pid)
	must.Eq(t, r.ShimPID, ppid(t, r.ContainerPID))

	must.NoError(t, e.runc.Kill(ctx, e.bundle.ID, syscall.SIGKILL, false))
	must.Eq(t, 9, wait(t, r).Signal)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
