// Package spec builds the OCI runtime spec (config.json) runc uses to run a
// Ferry task.
//
// Build is deterministic for a given input and host: it reads the image's
// /etc/passwd and /etc/group from the rootfs, the host's /etc/resolv.conf and
// /etc/hosts, and device nodes named by Nomad. The only files it writes are
// the ones a task in its own network namespace needs and Nomad expects the
// driver to own: <task dir>/resolv.conf (when the task has Nomad DNS
// settings), <task dir>/hosts, and Nomad's alloc-wide <alloc dir>/hosts for
// group networks.
package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"github.com/ferry-nomad/ferry/driver/runc"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Mount is a user-requested mount from the task config (`mounts` or
// `volumes`).
type Mount struct {
	Type     string   // "bind" (default) or "tmpfs"
	Source   string   // host path (bind); ignored for tmpfs
	Target   string   // absolute path in the container
	Readonly bool     // mount read-only
	Options  []string // extra mount options (e.g. "rslave", "size=64m" for tmpfs)
}

// Input is everything Build needs to describe one task's container.
type Input struct {
	ContainerID string    // runc container id
	RootFS      string    // absolute host path of the container rootfs
	Readonly    bool      // readonly_rootfs
	Image       v1.Config // image config: Env, Entrypoint, Cmd, WorkingDir, User

	Entrypoint []string // task `entrypoint`; overrides the image Entrypoint (and drops the image Cmd) when set
	Command    string   // task `command`; when set, cmd = [Command] + Args
	Args       []string // task `args`; when set without Command, replaces the image Cmd
	WorkDir    string   // task `work_dir`, else image WorkingDir, else "/"
	User       string   // task `user` ("name", "uid", "name:group", "uid:gid"), else image User, else root
	Hostname   string   // task `hostname` (needs a network namespace)

	CapAdd  []string // task `cap_add` ("NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "ALL")
	CapDrop []string // task `cap_drop` (same forms)

	Mounts []Mount // task `mounts`/`volumes`, applied after all other mounts

	Task        *drivers.TaskConfig // Nomad's task config
	CgroupsPath string              // e.g. "/nomad/<allocID>.<task>"
	Terminal    bool                // allocate a terminal (false for tasks)
	// CriuConfig is the task's CRIU configuration file, which runc hands
	// to CRIU for each dump and restore (runc.CriuConfigAnnotation);
	// CRIU ignores it while it does not exist. Without it, runc would use
	// the node-wide /etc/criu/runc.conf.
	CriuConfig string
}

// builder holds the host paths Build consults, so tests can substitute them.
type builder struct {
	hostResolvConf string
	hostHosts      string
}

func defaultBuilder() *builder {
	return &builder{
		hostResolvConf: "/etc/resolv.conf",
		hostHosts:      "/etc/hosts",
	}
}

// Build returns the OCI runtime spec for a task. See the package
// documentation for the files it reads and writes.
func Build(in Input) (*specs.Spec, error) {
	return defaultBuilder().build(&in)
}

func (b *builder) build(in *Input) (*specs.Spec, error) {
	if in.Task == nil {
		return nil, errors.New("spec: task config is missing")
	}
	if in.RootFS == "" || !filepath.IsAbs(in.RootFS) {
		return nil, fmt.Errorf("spec: rootfs %q must be an absolute path", in.RootFS)
	}
	if in.Task.AllocDir == "" {
		return nil, fmt.Errorf("spec: task %q has no alloc dir; Nomad's task directories cannot be mounted", in.Task.Name)
	}

	args, err := buildArgs(in)
	if err != nil {
		return nil, err
	}
	cwd, err := buildCwd(in)
	if err != nil {
		return nil, err
	}
	usr, err := resolveUser(in.RootFS, in.User, in.Image.User)
	if err != nil {
		return nil, err
	}
	caps, err := capabilities(in.CapAdd, in.CapDrop)
	if err != nil {
		return nil, err
	}

	net := networkMode(in.Task.NetworkIsolation)
	host, err := hostname(in, net)
	if err != nil {
		return nil, err
	}

	mounts := defaultMounts()
	mounts = append(mounts, taskDirMounts(in.Task)...)
	etc, err := b.etcMounts(in.Task, net, host)
	if err != nil {
		return nil, err
	}
	mounts = append(mounts, etc...)
	vols, err := volumeMounts(in.Task.Mounts)
	if err != nil {
		return nil, err
	}
	mounts = append(mounts, vols...)
	user, err := userMounts(in.Mounts)
	if err != nil {
		return nil, err
	}
	mounts = append(mounts, user...)

	res, err := resources(in.Task.Resources)
	if err != nil {
		return nil, err
	}
	devNodes, devRules, err := devices(in.Task.Devices)
	if err != nil {
		return nil, err
	}
	res.Devices = append(res.Devices, devRules...)

	seccomp, err := seccompProfile(in)
	if err != nil {
		return nil, err
	}

	s := &specs.Spec{
		Version: specs.Version,
		Root: &specs.Root{
			Path:     in.RootFS,
			Readonly: in.Readonly,
		},
		Process: &specs.Process{
			Terminal: in.Terminal,
			User: specs.User{
				UID:            usr.UID,
				GID:            usr.GID,
				AdditionalGids: usr.AdditionalGids,
			},
			Args: args,
			Env:  buildEnv(in.Image.Env, in.Task.Env, usr.Home),
			Cwd:  cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: append([]string(nil), caps...),
				Permitted: append([]string(nil), caps...),
			},
			// No Rlimits: the container inherits the runtime's limits.
			NoNewPrivileges: false,
		},
		Hostname: host,
		Mounts:   mounts,
		Linux: &specs.Linux{
			Resources:         res,
			CgroupsPath:       in.CgroupsPath,
			Namespaces:        namespaces(net),
			Devices:           devNodes,
			Seccomp:           seccomp,
			RootfsPropagation: rootfsPropagation(mounts),
			MaskedPaths:       append([]string(nil), maskedPaths...),
			ReadonlyPaths:     append([]string(nil), readonlyPaths...),
		},
	}
	if in.CriuConfig != "" {
		s.Annotations = map[string]string{runc.CriuConfigAnnotation: in.CriuConfig}
	}
	return s, nil
}

// Write stores the spec as bundleDir/config.json with mode 0600, replacing
// any previous file atomically.
func Write(s *specs.Spec, bundleDir string) error {
	if s == nil {
		return errors.New("spec: nothing to write")
	}
	data, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return fmt.Errorf("spec: encoding config.json: %w", err)
	}
	p := filepath.Join(bundleDir, "config.json")
	if err := atomicfile.Write(p, data, 0o600); err != nil {
		return fmt.Errorf("spec: writing %s: %w", p, err)
	}
	return nil
}
