package spec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-nomad/ferry/driver/runc"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
)

// testEnv is a scratch rootfs, alloc dir and fake host /etc for one test.
type testEnv struct {
	dir    string
	rootfs string
	task   *drivers.TaskConfig
	b      *builder
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	e := &testEnv{
		dir:    dir,
		rootfs: filepath.Join(dir, "rootfs"),
		task: &drivers.TaskConfig{
			Name:     "web",
			AllocID:  "0b7f7b4c-3b2e-4f2e-9d59-6f1a3c1b2a10",
			AllocDir: filepath.Join(dir, "alloc"),
			Env:      map[string]string{},
		},
		b: &builder{
			hostResolvConf: filepath.Join(dir, "host", "resolv.conf"),
			hostHosts:      filepath.Join(dir, "host", "hosts"),
		},
	}
	td := e.task.TaskDir()
	for _, d := range []string{e.rootfs, td.SharedAllocDir, td.LocalDir, td.SecretsDir, filepath.Join(dir, "host")} {
		must.NoError(t, os.MkdirAll(d, 0o755))
	}
	must.NoError(t, os.WriteFile(e.b.hostResolvConf, []byte("nameserver 10.0.0.2\nsearch example.com\noptions ndots:2\n"), 0o644))
	must.NoError(t, os.WriteFile(e.b.hostHosts, []byte("127.0.0.1 localhost\n"), 0o644))
	return e
}

// input returns a minimal valid Input for the env.
func (e *testEnv) input() Input {
	return Input{
		ContainerID: "c1",
		RootFS:      e.rootfs,
		Image:       v1.Config{Cmd: []string{"/bin/app"}},
		Task:        e.task,
		CgroupsPath: "/nomad/c1",
	}
}

func (e *testEnv) build(t *testing.T, in Input) *specs.Spec {
	t.Helper()
	s, err := e.b.build(&in)
	must.NoError(t, err)
	return s
}

func (e *testEnv) writeEtc(t *testing.T, passwd, group string) {
	t.Helper()
	etc := filepath.Join(e.rootfs, "etc")
	must.NoError(t, os.MkdirAll(etc, 0o755))
	if passwd != "" {
		must.NoError(t, os.WriteFile(filepath.Join(etc, "passwd"), []byte(passwd), 0o644))
	}
	if group != "" {
		must.NoError(t, os.WriteFile(filepath.Join(etc, "group"), []byte(group), 0o644))
	}
}

func TestBuild_Args(t *testing.T) {
	img := v1.Config{Entrypoint: []string{"/entry", "-e"}, Cmd: []string{"serve", "--port=80"}}
	cases := []struct {
		name       string
		image      v1.Config
		entrypoint []string
		command    string
		args       []string
		want       []string
		wantErr    string
	}{
		{name: "image entrypoint and cmd", image: img, want: []string{"/entry", "-e", "serve", "--port=80"}},
		{name: "image cmd only", image: v1.Config{Cmd: []string{"/bin/app", "x"}}, want: []string{"/bin/app", "x"}},
		{name: "image entrypoint only", image: v1.Config{Entrypoint: []string{"/entry"}}, want: []string{"/entry"}},
		{name: "command replaces image cmd", image: img, command: "run", want: []string{"/entry", "-e", "run"}},
		{name: "command and args", image: img, command: "run", args: []string{"a", "b"}, want: []string{"/entry", "-e", "run", "a", "b"}},
		{name: "args replace image cmd", image: img, args: []string{"a"}, want: []string{"/entry", "-e", "a"}},
		{name: "entrypoint drops image cmd", image: img, entrypoint: []string{"/other"}, want: []string{"/other"}},
		{name: "entrypoint with command", image: img, entrypoint: []string{"/other", "-x"}, command: "go", args: []string{"1"}, want: []string{"/other", "-x", "go", "1"}},
		{name: "entrypoint with args", image: img, entrypoint: []string{"/other"}, args: []string{"1"}, want: []string{"/other", "1"}},
		{name: "command without image", command: "/bin/sh", args: []string{"-c", "true"}, want: []string{"/bin/sh", "-c", "true"}},
		{name: "empty", wantErr: "command: image has no Entrypoint or Cmd; set `command`"},
		{name: "args only without image", args: []string{"x"}, want: []string{"x"}},
		{name: "empty program", image: v1.Config{Cmd: []string{""}}, wantErr: "command: program to run is empty"},
		{name: "empty entrypoint program", entrypoint: []string{""}, wantErr: "entrypoint: first element is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			in := e.input()
			in.Image = tc.image
			in.Entrypoint, in.Command, in.Args = tc.entrypoint, tc.command, tc.args
			s, err := e.b.build(&in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.want, s.Process.Args)
		})
	}
}

// The spec names the task's CRIU configuration file, so that runc hands
// it, and not the node-wide /etc/criu/runc.conf, to CRIU.
func TestBuild_CriuConfig(t *testing.T) {
	e := newTestEnv(t)
	in := e.input()
	in.Command = "/bin/app"
	must.MapEmpty(t, e.build(t, in).Annotations)
	in.CriuConfig = "/var/lib/ferry/tasks/c1/criu.conf"
	must.Eq(t, map[string]string{runc.CriuConfigAnnotation: in.CriuConfig}, e.build(t, in).Annotations)
}

func TestBuild_Env(t *testing.T) {
	cases := []struct {
		name     string
		imageEnv []string
		taskEnv  map[string]string
		want     []string
	}{
		{
			name:     "task wins and output is sorted",
			imageEnv: []string{"PATH=/img/bin", "B=image", "A=image", "EMPTY="},
			taskEnv:  map[string]string{"B": "task", "C": "task", "NOMAD_TASK_NAME": "web"},
			want:     []string{"A=image", "B=task", "C=task", "EMPTY=", "HOME=/", "NOMAD_TASK_NAME=web", "PATH=/img/bin"},
		},
		{
			name: "defaults PATH and HOME",
			want: []string{"HOME=/", "PATH=" + defaultPath},
		},
		{
			name:     "task overrides PATH and HOME, bare names dropped",
			imageEnv: []string{"PATH=/img/bin", "BARE", "V=a=b"},
			taskEnv:  map[string]string{"PATH": "/task/bin", "HOME": "/home/x"},
			want:     []string{"HOME=/home/x", "PATH=/task/bin", "V=a=b"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.Env = tc.taskEnv
			in := e.input()
			in.Image.Env = tc.imageEnv
			s := e.build(t, in)
			must.Eq(t, tc.want, s.Process.Env)
		})
	}

	t.Run("HOME from passwd", func(t *testing.T) {
		e := newTestEnv(t)
		e.writeEtc(t, "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", "")
		in := e.input()
		in.User = "app"
		s := e.build(t, in)
		must.SliceContains(t, s.Process.Env, "HOME=/home/app")
	})
}

func TestBuild_Cwd(t *testing.T) {
	cases := []struct {
		name, workDir, imageDir, want, wantErr string
	}{
		{name: "default", want: "/"},
		{name: "image", imageDir: "/srv/", want: "/srv"},
		{name: "task wins", workDir: "/app", imageDir: "/srv", want: "/app"},
		{name: "relative task", workDir: "app", wantErr: "work_dir: \"app\" is not an absolute path"},
		{name: "relative image", imageDir: "srv", wantErr: "image WorkingDir \"srv\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			in := e.input()
			in.WorkDir, in.Image.WorkingDir = tc.workDir, tc.imageDir
			s, err := e.b.build(&in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.want, s.Process.Cwd)
		})
	}
}

func TestBuild_User(t *testing.T) {
	const passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"app:x:1000:1001:App:/home/app:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	const group = "root:x:0:\n" +
		"app:x:1001:\n" +
		"video:x:44:app\n" +
		"audio:x:29:app,other\n" +
		"staff:x:50:\n"

	cases := []struct {
		name      string
		noEtc     bool
		user      string
		imageUser string
		wantUID   uint32
		wantGID   uint32
		wantExtra []uint32
		wantErr   string
	}{
		{name: "default root", wantUID: 0, wantGID: 0},
		{name: "numeric uid in passwd", user: "1000", wantUID: 1000, wantGID: 1001, wantExtra: []uint32{44, 29}},
		{name: "numeric uid not in passwd", user: "4242", wantUID: 4242, wantGID: 0},
		{name: "uid:gid", user: "4242:4343", wantUID: 4242, wantGID: 4343},
		{name: "name", user: "app", wantUID: 1000, wantGID: 1001, wantExtra: []uint32{44, 29}},
		{name: "name:group", user: "app:staff", wantUID: 1000, wantGID: 50},
		{name: "name:gid", user: "nobody:7", wantUID: 65534, wantGID: 7},
		{name: "image user", imageUser: "app", wantUID: 1000, wantGID: 1001, wantExtra: []uint32{44, 29}},
		{name: "task user wins over image", user: "nobody", imageUser: "app", wantUID: 65534, wantGID: 65534},
		{name: "numeric without etc files", noEtc: true, user: "1000:1000", wantUID: 1000, wantGID: 1000},
		{name: "default root without etc files", noEtc: true, wantUID: 0, wantGID: 0},
		{name: "unknown name", user: "ghost", wantErr: `user: user "ghost" not found in ` + "ROOTFS/etc/passwd; use a numeric uid[:gid]"},
		{name: "unknown group", user: "app:ghosts", wantErr: `user: group "ghosts" not found in ROOTFS/etc/group`},
		{name: "name without passwd", noEtc: true, user: "app", wantErr: `user: user "app" not found in ROOTFS/etc/passwd (file does not exist)`},
		{name: "unknown image user", imageUser: "ghost", wantErr: `user (from the image): user "ghost" not found`},
		{name: "out of range", user: "4294967296", wantErr: "out of range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			if !tc.noEtc {
				e.writeEtc(t, passwd, group)
			}
			in := e.input()
			in.User, in.Image.User = tc.user, tc.imageUser
			s, err := e.b.build(&in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, strings.ReplaceAll(tc.wantErr, "ROOTFS", e.rootfs))
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.wantUID, s.Process.User.UID)
			must.Eq(t, tc.wantGID, s.Process.User.GID)
			must.Eq(t, tc.wantExtra, s.Process.User.AdditionalGids)
		})
	}

	t.Run("passwd symlink cannot escape the rootfs", func(t *testing.T) {
		e := newTestEnv(t)
		etc := filepath.Join(e.rootfs, "etc")
		must.NoError(t, os.MkdirAll(etc, 0o755))
		// An absolute link resolves inside the rootfs, not on the host.
		must.NoError(t, os.WriteFile(filepath.Join(etc, "passwd.real"), []byte("app:x:7:8::/:/bin/sh\n"), 0o644))
		must.NoError(t, os.Symlink("/etc/passwd.real", filepath.Join(etc, "passwd")))
		in := e.input()
		in.User = "app"
		s := e.build(t, in)
		must.Eq(t, uint32(7), s.Process.User.UID)
		must.Eq(t, uint32(8), s.Process.User.GID)

		in.User = "root" // exists on the host, not in this rootfs
		_, err := e.b.build(&in)
		must.ErrorContains(t, err, `user "root" not found`)
	})
}

func TestBuild_Capabilities(t *testing.T) {
	defaults := defaultCaps[:]
	cases := []struct {
		name    string
		add     []string
		drop    []string
		want    []string
		wantErr string
	}{
		{name: "defaults", want: defaults},
		{
			name: "add in every spelling",
			add:  []string{"NET_ADMIN", "sys_time", "CAP_SYS_PTRACE", "cap_ipc_lock"},
			want: sorted(append(slices.Clone(defaults), "CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_SYS_PTRACE", "CAP_IPC_LOCK")),
		},
		{
			name: "drop",
			drop: []string{"net_raw", "CAP_MKNOD"},
			want: without(defaults, "CAP_NET_RAW", "CAP_MKNOD"),
		},
		{name: "drop all", drop: []string{"ALL"}, want: nil},
		{name: "drop all add back", drop: []string{"all"}, add: []string{"chown", "KILL"}, want: []string{"CAP_CHOWN", "CAP_KILL"}},
		{name: "add all", add: []string{"ALL"}, want: grantable()},
		{name: "add wins over drop", add: []string{"NET_RAW"}, drop: []string{"NET_RAW"}, want: defaults},
		{name: "bad add", add: []string{"NET_ADMINN"}, wantErr: `cap_add: unknown capability "NET_ADMINN"; use names like "NET_ADMIN" or "CAP_NET_ADMIN"`},
		{name: "bad drop", drop: []string{"CAP_FOO"}, wantErr: `cap_drop: unknown capability "CAP_FOO"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateCaps(tc.add, tc.drop)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
			} else {
				must.NoError(t, err)
			}

			e := newTestEnv(t)
			in := e.input()
			in.CapAdd, in.CapDrop = tc.add, tc.drop
			s, err := e.b.build(&in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			c := s.Process.Capabilities
			must.Eq(t, sorted(tc.want), c.Bounding)
			must.Eq(t, c.Bounding, c.Effective)
			must.Eq(t, c.Bounding, c.Permitted)
			must.SliceEmpty(t, c.Inheritable)
			must.SliceEmpty(t, c.Ambient)
		})
	}
}

func TestParseVolume(t *testing.T) {
	cases := []struct {
		in      string
		want    Mount
		wantErr string
	}{
		{in: "/srv/data:/data", want: Mount{Type: "bind", Source: "/srv/data", Target: "/data"}},
		{in: "/srv/data/:/data/./x/:ro", want: Mount{Type: "bind", Source: "/srv/data", Target: "/data/x", Readonly: true}},
		{in: "/srv:/srv:rw", want: Mount{Type: "bind", Source: "/srv", Target: "/srv"}},
		{in: "/srv:/srv:ro,rslave", want: Mount{Type: "bind", Source: "/srv", Target: "/srv", Readonly: true, Options: []string{"rslave"}}},
		{in: "/srv:/srv:rshared", want: Mount{Type: "bind", Source: "/srv", Target: "/srv", Options: []string{"rshared"}}},
		{in: "data:/data", wantErr: "volumes: host path \"data\" in \"data:/data\" is relative; use an absolute path, or Nomad host volumes"},
		{in: "./data:/data", wantErr: "is relative"},
		{in: "/srv:data", wantErr: "volumes: target \"data\" is not an absolute path"},
		{in: "/srv", wantErr: "is not of the form"},
		{in: "/a:/b:ro:x", wantErr: "is not of the form"},
		{in: ":/data", wantErr: "empty host path"},
		{in: "/srv:", wantErr: "volumes: empty target path"},
		{in: "/srv:/", wantErr: "cannot mount over the container root"},
		{in: "/srv:/srv:rx", wantErr: "volumes: unknown mode \"rx\""},
		{in: "/srv:/srv:ro,rw", wantErr: "sets the access mode twice"},
		{in: "/srv:/srv:rslave,rshared", wantErr: "sets the propagation twice"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseVolume(tc.in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestBuild_Mounts(t *testing.T) {
	e := newTestEnv(t)
	e.task.Mounts = []*drivers.MountConfig{
		{HostPath: "/opt/vol-a", TaskPath: "/vol/a", Readonly: true},
		{HostPath: "/opt/vol-b", TaskPath: "/vol/b/", PropagationMode: "host-to-task"},
		{HostPath: "/opt/vol-c", TaskPath: "/vol/c", PropagationMode: "bidirectional"},
		{HostPath: "/opt/vol-d", TaskPath: "/vol/d", PropagationMode: "private"},
	}
	in := e.input()
	in.Mounts = []Mount{
		{Source: "/srv/data", Target: "/data/", Readonly: true},
		{Type: "tmpfs", Target: "/scratch", Options: []string{"size=64m"}},
		{Type: "bind", Source: "/srv/x", Target: "/x", Options: []string{"bind", "rslave", "nosuid"}},
	}
	s := e.build(t, in)

	td := e.task.TaskDir()
	want := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: "/alloc", Type: "bind", Source: td.SharedAllocDir, Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/local", Type: "bind", Source: td.LocalDir, Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/secrets", Type: "bind", Source: td.SecretsDir, Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: e.b.hostResolvConf, Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/etc/hosts", Type: "bind", Source: e.b.hostHosts, Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/vol/a", Type: "bind", Source: "/opt/vol-a", Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/vol/b", Type: "bind", Source: "/opt/vol-b", Options: []string{"rbind", "rslave", "rw"}},
		{Destination: "/vol/c", Type: "bind", Source: "/opt/vol-c", Options: []string{"rbind", "rshared", "rw"}},
		{Destination: "/vol/d", Type: "bind", Source: "/opt/vol-d", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=64m", "rw"}},
		{Destination: "/x", Type: "bind", Source: "/srv/x", Options: []string{"bind", "rslave", "nosuid", "rw"}},
	}
	must.Eq(t, want, s.Mounts)
	must.Eq(t, "shared", s.Linux.RootfsPropagation)

	t.Run("host files absent are skipped", func(t *testing.T) {
		e := newTestEnv(t)
		must.NoError(t, os.Remove(e.b.hostResolvConf))
		must.NoError(t, os.Remove(e.b.hostHosts))
		s := e.build(t, e.input())
		for _, m := range s.Mounts {
			must.False(t, strings.HasPrefix(m.Destination, "/etc/"), must.Sprintf("unexpected mount %v", m))
		}
		must.Eq(t, "", s.Linux.RootfsPropagation)
	})

	t.Run("slave propagation", func(t *testing.T) {
		e := newTestEnv(t)
		e.task.Mounts = []*drivers.MountConfig{{HostPath: "/opt/b", TaskPath: "/b", PropagationMode: "host-to-task"}}
		must.Eq(t, "rslave", e.build(t, e.input()).Linux.RootfsPropagation)
	})

	errCases := []struct {
		name    string
		nomad   []*drivers.MountConfig
		user    []Mount
		wantErr string
	}{
		{name: "relative user target", user: []Mount{{Source: "/srv", Target: "data"}}, wantErr: `mounts: target "data" is not an absolute path`},
		{name: "root user target", user: []Mount{{Source: "/srv", Target: "/.."}}, wantErr: "mounts: cannot mount over the container root"},
		{name: "relative user source", user: []Mount{{Source: "srv", Target: "/data"}}, wantErr: `mounts: source "srv" for "/data" is not an absolute path`},
		{name: "unknown type", user: []Mount{{Type: "nfs", Target: "/data"}}, wantErr: `mounts: unknown type "nfs"`},
		{name: "relative volume_mount", nomad: []*drivers.MountConfig{{HostPath: "/a", TaskPath: "a"}}, wantErr: `volume_mount: target "a" is not an absolute path`},
		{name: "bad propagation", nomad: []*drivers.MountConfig{{HostPath: "/a", TaskPath: "/a", PropagationMode: "sideways"}}, wantErr: `volume_mount: unknown propagation_mode "sideways"`},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.Mounts = tc.nomad
			in := e.input()
			in.Mounts = tc.user
			_, err := e.b.build(&in)
			must.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestBuild_Network(t *testing.T) {
	nsTypes := func(s *specs.Spec) []specs.LinuxNamespaceType {
		var out []specs.LinuxNamespaceType
		for _, ns := range s.Linux.Namespaces {
			out = append(out, ns.Type)
		}
		return out
	}
	netnsPath := func(s *specs.Spec) string {
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				return ns.Path
			}
		}
		return "<none>"
	}
	group := func(hostsCfg *drivers.HostsConfig) *drivers.NetworkIsolationSpec {
		return &drivers.NetworkIsolationSpec{Mode: drivers.NetIsolationModeGroup, Path: "/var/run/netns/abc", HostsConfig: hostsCfg}
	}

	cases := []struct {
		name         string
		ni           *drivers.NetworkIsolationSpec
		hostname     string
		wantNS       []specs.LinuxNamespaceType
		wantNetns    string
		wantHostname string
		wantHosts    string // expected /etc/hosts source, relative to the test dir unless absolute
		wantErr      string
	}{
		{
			name:      "nil is host network",
			wantNS:    []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.MountNamespace},
			wantNetns: "<none>",
			wantHosts: "host/hosts",
		},
		{
			name:      "host mode",
			ni:        &drivers.NetworkIsolationSpec{Mode: drivers.NetIsolationModeHost},
			wantNS:    []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.MountNamespace},
			wantNetns: "<none>",
			wantHosts: "host/hosts",
		},
		{
			name:     "hostname with host network",
			hostname: "web",
			wantErr:  "hostname: \"web\" cannot be set with host networking",
		},
		{
			name:         "group netns with nomad hosts config",
			ni:           group(&drivers.HostsConfig{Hostname: "0b7f7b4c", Address: "172.26.64.5"}),
			wantNS:       []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.NetworkNamespace, specs.UTSNamespace, specs.MountNamespace},
			wantNetns:    "/var/run/netns/abc",
			wantHostname: "0b7f7b4c",
			wantHosts:    "alloc/hosts",
		},
		{
			name:         "task hostname wins",
			ni:           group(&drivers.HostsConfig{Hostname: "0b7f7b4c", Address: "172.26.64.5"}),
			hostname:     "api",
			wantNS:       []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.NetworkNamespace, specs.UTSNamespace, specs.MountNamespace},
			wantNetns:    "/var/run/netns/abc",
			wantHostname: "api",
			wantHosts:    "alloc/hosts",
		},
		{
			name:         "netns without hosts config",
			ni:           group(nil),
			hostname:     "api",
			wantNS:       []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.NetworkNamespace, specs.UTSNamespace, specs.MountNamespace},
			wantNetns:    "/var/run/netns/abc",
			wantHostname: "api",
			wantHosts:    "alloc/web/hosts",
		},
		{
			name:      "mode none without path gets an empty netns",
			ni:        &drivers.NetworkIsolationSpec{Mode: drivers.NetIsolationModeNone},
			wantNS:    []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.NetworkNamespace, specs.UTSNamespace, specs.MountNamespace},
			wantNetns: "",
			wantHosts: "alloc/web/hosts",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.NetworkIsolation = tc.ni
			in := e.input()
			in.Hostname = tc.hostname
			s, err := e.b.build(&in)
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.wantNS, nsTypes(s))
			must.Eq(t, tc.wantNetns, netnsPath(s))
			must.Eq(t, tc.wantHostname, s.Hostname)

			hosts := mountAt(s, "/etc/hosts")
			must.NotNil(t, hosts)
			must.Eq(t, filepath.Join(e.dir, tc.wantHosts), hosts.Source)
			data, err := os.ReadFile(hosts.Source)
			must.NoError(t, err)
			must.StrContains(t, string(data), "localhost")
			if tc.wantHostname != "" && tc.wantHosts != "alloc/hosts" {
				must.StrContains(t, string(data), "127.0.1.1\t"+tc.wantHostname)
			}
			if tc.wantHosts == "alloc/hosts" {
				must.StrContains(t, string(data), "172.26.64.5 0b7f7b4c")
			}
			must.NotNil(t, mountAt(s, "/etc/resolv.conf"))
		})
	}
}

func TestBuild_DNS(t *testing.T) {
	cases := []struct {
		name string
		dns  *drivers.DNSConfig
		want string
	}{
		{
			name: "servers only keeps host search and options",
			dns:  &drivers.DNSConfig{Servers: []string{"1.1.1.1", "8.8.8.8"}},
			want: "nameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch example.com\noptions ndots:2\n",
		},
		{
			name: "everything",
			dns:  &drivers.DNSConfig{Servers: []string{"1.1.1.1"}, Searches: []string{"a.test", "b.test"}, Options: []string{"ndots:5", "rotate"}},
			want: "nameserver 1.1.1.1\nsearch a.test b.test\noptions ndots:5 rotate\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.DNS = tc.dns
			s := e.build(t, e.input())
			m := mountAt(s, "/etc/resolv.conf")
			must.NotNil(t, m)
			must.Eq(t, filepath.Join(e.task.TaskDir().Dir, "resolv.conf"), m.Source)
			must.SliceContains(t, m.Options, "ro")
			data, err := os.ReadFile(m.Source)
			must.NoError(t, err)
			must.StrContains(t, string(data), tc.want)
		})
	}

	t.Run("empty dns config uses the host file", func(t *testing.T) {
		e := newTestEnv(t)
		e.task.DNS = &drivers.DNSConfig{}
		m := mountAt(e.build(t, e.input()), "/etc/resolv.conf")
		must.NotNil(t, m)
		must.Eq(t, e.b.hostResolvConf, m.Source)
	})
}

func TestBuild_Resources(t *testing.T) {
	res := func(memMB, memMaxMB int64, lr drivers.LinuxResources) *drivers.Resources {
		return &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{
				Memory: structs.AllocatedMemoryResources{MemoryMB: memMB, MemoryMaxMB: memMaxMB},
			},
			LinuxResources: &lr,
		}
	}
	cases := []struct {
		name    string
		res     *drivers.Resources
		wantMem *specs.LinuxMemory
		wantCPU *specs.LinuxCPU
		wantErr string
	}{
		{name: "none"},
		{
			name:    "memory",
			res:     res(256, 0, drivers.LinuxResources{MemoryLimitBytes: 256 * mib}),
			wantMem: &specs.LinuxMemory{Limit: ptr[int64](256 * mib)},
		},
		{
			name:    "memory_max makes memory the reservation",
			res:     res(256, 1024, drivers.LinuxResources{MemoryLimitBytes: 1024 * mib}),
			wantMem: &specs.LinuxMemory{Limit: ptr[int64](1024 * mib), Reservation: ptr[int64](256 * mib)},
		},
		{
			name:    "memory_max equal to memory",
			res:     res(256, 256, drivers.LinuxResources{MemoryLimitBytes: 256 * mib}),
			wantMem: &specs.LinuxMemory{Limit: ptr[int64](256 * mib)},
		},
		{
			name:    "memory_max -1 is unlimited",
			res:     res(256, -1, drivers.LinuxResources{MemoryLimitBytes: 256 * mib}),
			wantMem: &specs.LinuxMemory{Reservation: ptr[int64](256 * mib)},
		},
		{
			name:    "nomad resources without linux limit",
			res:     res(128, 0, drivers.LinuxResources{}),
			wantMem: &specs.LinuxMemory{Limit: ptr[int64](128 * mib)},
		},
		{
			name:    "cpu shares",
			res:     res(0, 0, drivers.LinuxResources{CPUShares: 500}),
			wantCPU: &specs.LinuxCPU{Shares: ptr[uint64](500)},
		},
		{
			name:    "cpu shares clamped",
			res:     res(0, 0, drivers.LinuxResources{CPUShares: 1_000_000}),
			wantCPU: &specs.LinuxCPU{Shares: ptr[uint64](maxCPUShares)},
		},
		{
			name:    "cores",
			res:     res(0, 0, drivers.LinuxResources{CPUShares: 2000, CpusetCpus: "1,3"}),
			wantCPU: &specs.LinuxCPU{Shares: ptr[uint64](2000), Cpus: "1,3"},
		},
		{
			name:    "quota and period",
			res:     res(0, 0, drivers.LinuxResources{CPUQuota: 50000, CPUPeriod: 100000}),
			wantCPU: &specs.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000)},
		},
		{
			name:    "negative memory",
			res:     res(-5, 0, drivers.LinuxResources{}),
			wantErr: "resources: negative memory",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.Resources = tc.res
			s, err := e.b.build(ptr(e.input()))
			if tc.wantErr != "" {
				must.ErrorContains(t, err, tc.wantErr)
				return
			}
			must.NoError(t, err)
			r := s.Linux.Resources
			must.Eq(t, tc.wantMem, r.Memory)
			must.Eq(t, tc.wantCPU, r.CPU)
			must.Nil(t, r.Pids)
			must.Eq(t, defaultDeviceRules(), r.Devices)
			must.Nil(t, s.Process.Rlimits)
		})
	}
}

func TestBuild_Devices(t *testing.T) {
	e := newTestEnv(t)
	e.task.Devices = []*drivers.DeviceConfig{
		{HostPath: "/dev/null", TaskPath: "/dev/mynull", Permissions: "rw"},
		{HostPath: "/dev/zero"},
	}
	s := e.build(t, e.input())

	must.Len(t, 2, s.Linux.Devices)
	must.Eq(t, "/dev/mynull", s.Linux.Devices[0].Path)
	must.Eq(t, "c", s.Linux.Devices[0].Type)
	must.Eq(t, int64(1), s.Linux.Devices[0].Major)
	must.Eq(t, int64(3), s.Linux.Devices[0].Minor)
	must.Eq(t, "/dev/zero", s.Linux.Devices[1].Path)
	must.Eq(t, int64(5), s.Linux.Devices[1].Minor)

	rules := s.Linux.Resources.Devices
	must.Eq(t, specs.LinuxDeviceCgroup{Allow: false, Access: "rwm"}, rules[0])
	n := len(rules)
	must.Eq(t, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: ptr[int64](1), Minor: ptr[int64](3), Access: "rw"}, rules[n-2])
	must.Eq(t, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: ptr[int64](1), Minor: ptr[int64](5), Access: "rwm"}, rules[n-1])

	errCases := []struct {
		name    string
		dev     *drivers.DeviceConfig
		wantErr string
	}{
		{name: "not a device", dev: &drivers.DeviceConfig{HostPath: e.b.hostHosts}, wantErr: "is not a character or block device"},
		{name: "missing", dev: &drivers.DeviceConfig{HostPath: "/dev/does-not-exist"}, wantErr: "device: stat /dev/does-not-exist"},
		{name: "bad permissions", dev: &drivers.DeviceConfig{HostPath: "/dev/null", Permissions: "rwx"}, wantErr: `device: permissions "rwx"`},
		{name: "relative task path", dev: &drivers.DeviceConfig{HostPath: "/dev/null", TaskPath: "dev/null"}, wantErr: "device: target"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.task.Devices = []*drivers.DeviceConfig{tc.dev}
			_, err := e.b.build(ptr(e.input()))
			must.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestBuild_Basics(t *testing.T) {
	e := newTestEnv(t)
	in := e.input()
	in.Readonly = true
	s := e.build(t, in)

	must.Eq(t, specs.Version, s.Version)
	must.Eq(t, &specs.Root{Path: e.rootfs, Readonly: true}, s.Root)
	must.False(t, s.Process.Terminal)
	must.False(t, s.Process.NoNewPrivileges)
	must.Nil(t, s.Process.Rlimits)
	must.Nil(t, s.Process.OOMScoreAdj)
	must.Nil(t, s.Linux.Seccomp)
	must.Nil(t, s.Linux.UIDMappings)
	must.Eq(t, "/nomad/c1", s.Linux.CgroupsPath)
	must.Eq(t, maskedPaths, s.Linux.MaskedPaths)
	must.Eq(t, readonlyPaths, s.Linux.ReadonlyPaths)
	for _, ns := range s.Linux.Namespaces {
		must.NotEq(t, specs.UserNamespace, ns.Type)
	}

	errCases := []struct {
		name    string
		mod     func(*Input)
		wantErr string
	}{
		{name: "no task", mod: func(in *Input) { in.Task = nil }, wantErr: "task config is missing"},
		{name: "relative rootfs", mod: func(in *Input) { in.RootFS = "rootfs" }, wantErr: "must be an absolute path"},
		{name: "no alloc dir", mod: func(in *Input) { in.Task = &drivers.TaskConfig{Name: "web"} }, wantErr: "has no alloc dir"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			in := e.input()
			tc.mod(&in)
			_, err := e.b.build(&in)
			must.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestWrite(t *testing.T) {
	e := newTestEnv(t)
	s := e.build(t, e.input())
	bundle := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(bundle, "config.json"), []byte("old"), 0o644))
	must.NoError(t, Write(s, bundle))

	p := filepath.Join(bundle, "config.json")
	st, err := os.Stat(p)
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o600), st.Mode().Perm())

	data, err := os.ReadFile(p)
	must.NoError(t, err)
	var got specs.Spec
	must.NoError(t, json.Unmarshal(data, &got))
	must.Eq(t, s.Process.Args, got.Process.Args)
	must.StrNotContains(t, string(data), "rlimits")

	entries, err := os.ReadDir(bundle)
	must.NoError(t, err)
	must.Len(t, 1, entries) // no temp files left behind

	must.ErrorContains(t, Write(s, filepath.Join(bundle, "missing")), "spec: writing")
}

func mountAt(s *specs.Spec, dest string) *specs.Mount {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == dest {
			return &s.Mounts[i]
		}
	}
	return nil
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func without(s []string, drop ...string) []string {
	var out []string
	for _, c := range s {
		if !slices.Contains(drop, c) {
			out = append(out, c)
		}
	}
	return out
}

// grantable are the capabilities of this process's bounding set: what
// cap_add = ["ALL"] grants on this machine (read from /proc, apart from the
// code under test).
func grantable() []string {
	status, _ := os.ReadFile("/proc/self/status")
	m := regexp.MustCompile(`CapBnd:\s*([0-9a-f]+)`).FindSubmatch(status)
	bnd, _ := strconv.ParseUint(string(m[1]), 16, 64)
	var out []string
	for i, c := range knownCaps {
		if bnd&(1<<i) != 0 {
			out = append(out, c)
		}
	}
	return sorted(out)
}
