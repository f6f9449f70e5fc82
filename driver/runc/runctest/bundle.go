// Package runctest builds minimal OCI bundles for tests that run real
// containers with runc: a busybox rootfs and a small runtime spec.
package runctest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Busybox is the static busybox copied into test root filesystems.
const Busybox = "/bin/busybox"

// Applets are linked to busybox in the test rootfs.
var Applets = []string{
	"sh", "echo", "sleep", "cat", "head", "stty", "kill", "mktemp", "tty",
	"true", "ls", "seq", "tr",
}

// Bundle is an OCI bundle made for a test.
type Bundle struct {
	// Dir holds config.json and rootfs.
	Dir string
	// ID is a random container id.
	ID string
	// CgroupsPath is linux.cgroupsPath of the spec.
	CgroupsPath string
	// Spec is the runtime spec written to config.json.
	Spec *specs.Spec
}

// RuncPath returns the runc binary the tests use.
func RuncPath() string {
	if p := os.Getenv("FERRY_RUNC"); p != "" {
		return p
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	return "/usr/local/bin/runc"
}

// Require skips the test unless it runs as root with runc and busybox.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat(RuncPath()); err != nil {
		t.Skipf("runc not found: %v", err)
	}
	if _, err := os.Stat(Busybox); err != nil {
		t.Skipf("busybox not found: %v", err)
	}
}

// RandomID returns prefix followed by random hex digits.
func RandomID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewBundle writes a bundle whose process runs args, under a new temporary
// directory. The container uses the host network, cgroupsPath
// /ferry-test/<id>, no rlimits and no terminal.
func NewBundle(t testing.TB, args ...string) *Bundle {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "tmp", "proc", "dev", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatalf("rootfs: %v", err)
		}
	}
	if err := copyFile(Busybox, filepath.Join(rootfs, "bin", "busybox")); err != nil {
		t.Fatalf("copy busybox: %v", err)
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			t.Fatalf("link %s: %v", a, err)
		}
	}
	id := RandomID("ferry-test-")
	b := &Bundle{Dir: dir, ID: id, CgroupsPath: "/ferry-test/" + id}
	b.Spec = Spec(args, b.CgroupsPath)
	b.Write(t)
	return b
}

// Write (re)writes config.json from b.Spec.
func (b *Bundle) Write(t testing.TB) {
	t.Helper()
	data, err := json.MarshalIndent(b.Spec, "", "  ")
	if err != nil {
		t.Fatalf("encode spec: %v", err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "config.json"), data, 0o644); err != nil {
		t.Fatalf("write spec: %v", err)
	}
}

// Spec returns a minimal runtime spec running args.
func Spec(args []string, cgroupsPath string) *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "ferry-test",
		Process: &specs.Process{
			Args: args,
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"TERM=xterm",
			},
			Cwd: "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs",
				Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
				Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm",
				Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
		},
	}
}

// Cleanup registers a forced `runc delete` of id under root at the end of
// the test.
func Cleanup(t testing.TB, root, id string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, RuncPath(), "--root", root, "delete", "--force", id).Run()
	})
}

// Subreaper makes the calling process a child subreaper, so the init of a
// container started with `runc run --detach` is reparented to it rather
// than to a pid 1 that might not reap it.
func Subreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// Reap waits briefly for pid if it is a child of the calling process. It
// returns at once for a pid that is not a child.
func Reap(pid int) {
	if pid <= 0 {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid || (err != nil && err != unix.EINTR) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RunDetached starts the bundle's container with `runc run --detach` and
// /dev/null as its stdio, and deletes it at the end of the test.
func RunDetached(t testing.TB, root string, b *Bundle) {
	t.Helper()
	Cleanup(t, root, b.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The container inherits runc's stdio, so runc's errors go to a log
	// file rather than to a pipe the test would wait on.
	logFile := filepath.Join(t.TempDir(), "runc.log")
	cmd := exec.CommandContext(ctx, RuncPath(), "--root", root, "--log", logFile,
		"run", "--detach", "--bundle", b.Dir, b.ID)
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logFile)
		t.Fatalf("runc run %s: %v: %s", b.ID, err, out)
	}
	// When the test process is a subreaper the init is now its child:
	// reap it as soon as it exits, or `runc delete --force` would wait
	// for the zombie.
	if out, err := exec.CommandContext(ctx, RuncPath(), "--root", root, "state", b.ID).Output(); err == nil {
		var st struct {
			Pid int `json:"pid"`
		}
		if json.Unmarshal(out, &st) == nil && st.Pid > 0 && parentOf(st.Pid) == os.Getpid() {
			go func() {
				var ws unix.WaitStatus
				for {
					if _, err := unix.Wait4(st.Pid, &ws, 0, nil); err != unix.EINTR {
						return
					}
				}
			}()
		}
	}
}

// parentOf returns the parent pid of pid, or 0.
func parentOf(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
