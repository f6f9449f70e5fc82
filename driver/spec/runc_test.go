package spec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/shoenig/test/must"
)

// TestBuild_RuncRun writes a spec for a busybox bundle and runs it with the
// real runc, checking stdout, the exit code and the memory limit.
func TestBuild_RuncRun(t *testing.T) {
	runc := requireRunc(t)

	cases := []struct {
		name     string
		script   string
		wantOut  string
		wantCode int
		mod      func(in *Input, dir string)
	}{
		{
			name:    "hello",
			script:  "echo hello",
			wantOut: "hello\n",
		},
		{
			name:     "limits, user, dirs and exit code",
			script:   "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo $(id -u):$(id -g); test -d /alloc && test -d /local && test -d /secrets && echo dirs; ulimit -n; exit 3",
			wantOut:  "67108864\n0:0\ndirs\n" + currentNofile(t) + "\n",
			wantCode: 3,
		},
		{
			name: "own netns, hostname, user, readonly rootfs, volume and device",
			script: "hostname; echo $(id -u):$(id -g); grep -c 127.0.1.1 /etc/hosts; " +
				"cat /vol/msg; touch /x 2>/dev/null || echo rootfs-ro; echo ok > /local/out && cat /local/out; " +
				"test -c /dev/myzero && cat /dev/myzero | head -c 3 | wc -c",
			wantOut: "box\n1000:1000\n1\nfrom-host\nrootfs-ro\nok\n3\n",
			mod: func(in *Input, dir string) {
				in.Task.NetworkIsolation = &drivers.NetworkIsolationSpec{Mode: drivers.NetIsolationModeNone}
				in.Hostname = "box"
				in.User = "1000:1000"
				in.Readonly = true
				vol := filepath.Join(dir, "vol")
				must.NoError(t, os.MkdirAll(vol, 0o755))
				must.NoError(t, os.WriteFile(filepath.Join(vol, "msg"), []byte("from-host\n"), 0o644))
				in.Mounts = []Mount{{Source: vol, Target: "/vol", Readonly: true}}
				in.Task.Devices = []*drivers.DeviceConfig{{HostPath: "/dev/zero", TaskPath: "/dev/myzero", Permissions: "rw"}}
				// The task dirs are written by the task user.
				td := in.Task.TaskDir()
				must.NoError(t, os.Chmod(td.LocalDir, 0o777))
			},
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bundle := filepath.Join(dir, "bundle")
			rootfs := filepath.Join(bundle, "rootfs")
			makeBusyboxRootfs(t, rootfs, "sh", "echo", "cat", "id", "test", "hostname", "grep", "touch", "head", "wc")

			allocDir := filepath.Join(dir, "alloc")
			task := &drivers.TaskConfig{
				Name:     "web",
				AllocID:  "ferry-test-alloc",
				AllocDir: allocDir,
				Resources: &drivers.Resources{
					NomadResources: &structs.AllocatedTaskResources{
						Memory: structs.AllocatedMemoryResources{MemoryMB: 64},
						Cpu:    structs.AllocatedCpuResources{CpuShares: 100},
					},
					LinuxResources: &drivers.LinuxResources{
						MemoryLimitBytes: 64 * mib,
						CPUShares:        100,
					},
				},
			}
			td := task.TaskDir()
			for _, d := range []string{td.SharedAllocDir, td.LocalDir, td.SecretsDir} {
				must.NoError(t, os.MkdirAll(d, 0o755))
			}

			id := "ferry-spec-test-" + randomHex(t)
			in := Input{
				ContainerID: id,
				RootFS:      rootfs,
				Command:     "/bin/sh",
				Args:        []string{"-c", tc.script},
				Task:        task,
				CgroupsPath: "/ferry-test/" + id,
			}
			if tc.mod != nil {
				tc.mod(&in, dir)
			}
			s, err := Build(in)
			must.NoError(t, err)
			must.Nil(t, s.Process.Rlimits)
			must.NoError(t, Write(s, bundle))

			stateRoot := filepath.Join(dir, "runc-state")
			t.Cleanup(func() {
				// runc run removes the container (and its cgroup) on exit;
				// this only matters when the test fails half-way.
				_ = exec.Command(runc, "--root", stateRoot, "delete", "--force", id).Run()
			})

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, runc, "--root", stateRoot, "run", "--bundle", bundle, id)
			cmd.Stdin = nil
			cmd.Stdout = &stdout
			cmd.Stderr = &stderr
			err = cmd.Run()
			code := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) {
				code = exitErr.ExitCode()
			} else {
				must.NoError(t, err, must.Sprintf("stderr: %s", stderr.String()))
			}
			must.Eq(t, tc.wantCode, code, must.Sprintf("stdout: %q stderr: %q", stdout.String(), stderr.String()))
			must.Eq(t, tc.wantOut, stdout.String(), must.Sprintf("stderr: %q", stderr.String()))

			for _, ctrl := range []string{"memory", "cpu", "pids"} {
				_, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctrl, "ferry-test", id))
				must.True(t, os.IsNotExist(err), must.Sprintf("cgroup %s/ferry-test/%s left behind", ctrl, id))
			}
		})
	}
}

func requireRunc(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers with runc needs root")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		runc = "/usr/local/bin/runc"
		if _, err := os.Stat(runc); err != nil {
			t.Skip("runc not installed")
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("/bin/busybox not installed")
	}
	return runc
}

// makeBusyboxRootfs creates a minimal rootfs with busybox and applet links
// in /bin.
func makeBusyboxRootfs(t *testing.T, rootfs string, applets ...string) {
	t.Helper()
	bin := filepath.Join(rootfs, "bin")
	must.NoError(t, os.MkdirAll(bin, 0o755))
	src, err := os.Open("/bin/busybox")
	must.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(bin, "busybox"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	must.NoError(t, err)
	_, err = io.Copy(dst, src)
	must.NoError(t, err)
	must.NoError(t, dst.Close())
	for _, a := range applets {
		must.NoError(t, os.Symlink("busybox", filepath.Join(bin, a)))
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	must.NoError(t, err)
	return hex.EncodeToString(b)
}

// currentNofile returns the soft RLIMIT_NOFILE of the test process, which
// the container must inherit because the spec requests no rlimits.
func currentNofile(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("/bin/busybox", "sh", "-c", "ulimit -n").Output()
	if err != nil {
		t.Skipf("cannot read the current RLIMIT_NOFILE: %v", err)
	}
	return strings.TrimSpace(string(out))
}
