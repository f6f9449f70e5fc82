package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/image"
	"github.com/ferry-nomad/ferry/driver/spec"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// Config is the decoded `plugin "nomad-driver-ferry" { config { ... } }` block.
type Config struct {
	RuncPath           string       `codec:"runc_path"`
	CriuPath           string       `codec:"criu_path"`
	DataDir            string       `codec:"data_dir"`
	StateDir           string       `codec:"state_dir"`
	Platform           string       `codec:"platform"`
	InsecureRegistries []string     `codec:"insecure_registries"`
	Auth               AuthConfig   `codec:"auth"`
	GC                 GCConfig     `codec:"gc"`
	Nomad              ServerConfig `codec:"nomad"`
	Consul             ServerConfig `codec:"consul"`
	CheckpointDir      string       `codec:"checkpoint_dir"`
	Transfer           Transfer     `codec:"transfer"`
}

// Transfer is the `transfer { ... }` block: where the driver serves its
// checkpoints to the nodes that restore them, and receives the ones pushed
// to it, over mutual TLS with the cluster's CA. Without the TLS files a
// checkpoint is restored only on the node that took it or from a shared
// checkpoint_dir.
type Transfer struct {
	Listen     string `codec:"listen"`
	Advertise  string `codec:"advertise"`
	CAFile     string `codec:"ca_file"`
	CertFile   string `codec:"cert_file"`
	KeyFile    string `codec:"key_file"`
	ServerName string `codec:"server_name"`
}

// enabled reports whether the TLS files are configured.
func (t *Transfer) enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// defaultTransferListen is transfer.listen when the block does not set it.
const defaultTransferListen = "0.0.0.0:4701"

// validate checks the transfer block; errors name the field.
func (t *Transfer) validate() []error {
	var errs []error
	if t.Listen == "" {
		t.Listen = defaultTransferListen
	}
	if _, _, err := net.SplitHostPort(t.Listen); err != nil {
		errs = append(errs, fmt.Errorf("transfer.listen: %q must be host:port, e.g. \"0.0.0.0:4701\"", t.Listen))
	}
	if t.Advertise != "" {
		if host, port, err := net.SplitHostPort(t.Advertise); err != nil || host == "" || port == "" || port == "0" {
			errs = append(errs, fmt.Errorf("transfer.advertise: %q must be host:port other nodes reach this one at, e.g. \"10.0.0.5:4701\"", t.Advertise))
		}
	}
	if !t.enabled() {
		return errs
	}
	for _, f := range []struct{ name, path string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
		switch {
		case f.path == "":
			errs = append(errs, fmt.Errorf("transfer.%s: required with the other TLS files (ca_file, cert_file, key_file)", f.name))
		case !filepath.IsAbs(f.path):
			errs = append(errs, fmt.Errorf("transfer.%s: %q must be an absolute path", f.name, f.path))
		}
	}
	return errs
}

// AuthConfig points at a docker-style config.json holding registry credentials.
type AuthConfig struct {
	Config string `codec:"config"`
}

// GCConfig controls removal of images no task uses any more, and of
// containers no task tracks.
type GCConfig struct {
	Image              bool           `codec:"image"`
	ImageDelay         string         `codec:"image_delay"`
	DanglingContainers DanglingConfig `codec:"dangling_containers"`

	imageDelay time.Duration
}

// DanglingConfig is the `gc { dangling_containers { ... } }` block: how
// containers under the driver's directories that no task tracks are found
// and removed (reconcile_dangling.go). An empty duration is its default.
type DanglingConfig struct {
	Enabled       bool   `codec:"enabled"`
	Period        string `codec:"period"`
	CreationGrace string `codec:"creation_grace"`
	DryRun        bool   `codec:"dry_run"`

	period        time.Duration
	creationGrace time.Duration
}

// Defaults of gc.dangling_containers.period and creation_grace.
const (
	defaultDanglingPeriod        = 5 * time.Minute
	defaultDanglingCreationGrace = 5 * time.Minute
)

// ServerConfig is the address and token of a Nomad or Consul agent.
type ServerConfig struct {
	Address string `codec:"address"`
	Token   string `codec:"token"`
}

// validate checks every field and fills derived values; errors name the field.
func (c *Config) validate() error {
	var errs []error
	if !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("data_dir: %q must be an absolute path", c.DataDir))
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir: %q must be an absolute path", c.StateDir))
	}
	if c.RuncPath == "" {
		errs = append(errs, errors.New(`runc_path: must not be empty; use "runc" to search PATH`))
	}
	if c.CriuPath == "" {
		errs = append(errs, errors.New(`criu_path: must not be empty; use "criu" to search PATH`))
	}
	d, err := time.ParseDuration(c.GC.ImageDelay)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("gc.image_delay: %q is not a duration; use a value such as \"3m\"", c.GC.ImageDelay))
	case d < 0:
		errs = append(errs, fmt.Errorf("gc.image_delay: %q must not be negative", c.GC.ImageDelay))
	default:
		c.GC.imageDelay = d
	}
	errs = append(errs, c.GC.DanglingContainers.validate()...)
	for _, r := range c.InsecureRegistries {
		if r == "" || strings.Contains(r, "/") {
			errs = append(errs, fmt.Errorf("insecure_registries: %q must be a registry host[:port] such as \"10.0.0.1:5000\"", r))
		}
	}
	if c.Auth.Config != "" {
		if _, err := os.Stat(c.Auth.Config); err != nil {
			errs = append(errs, fmt.Errorf("auth.config: %w", err))
		}
	}
	if c.CheckpointDir != "" && !filepath.IsAbs(c.CheckpointDir) {
		errs = append(errs, fmt.Errorf("checkpoint_dir: %q must be an absolute path on storage every client shares", c.CheckpointDir))
	}
	errs = append(errs, c.Transfer.validate()...)
	if c.Platform != "" {
		if _, err := parsePlatform(c.Platform); err != nil {
			errs = append(errs, fmt.Errorf("platform: %w", err))
		}
	}
	return errors.Join(errs...)
}

// validate checks the dangling_containers block and fills its durations.
func (dc *DanglingConfig) validate() []error {
	var errs []error
	dc.period = defaultDanglingPeriod
	if dc.Period != "" {
		d, err := time.ParseDuration(dc.Period)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("gc.dangling_containers.period: %q is not a duration; use a value such as \"5m\"", dc.Period))
		case d <= 0:
			errs = append(errs, fmt.Errorf("gc.dangling_containers.period: %q must be positive", dc.Period))
		default:
			dc.period = d
		}
	}
	dc.creationGrace = defaultDanglingCreationGrace
	if dc.CreationGrace != "" {
		d, err := time.ParseDuration(dc.CreationGrace)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("gc.dangling_containers.creation_grace: %q is not a duration; use a value such as \"5m\"", dc.CreationGrace))
		case d < 0:
			errs = append(errs, fmt.Errorf("gc.dangling_containers.creation_grace: %q must not be negative", dc.CreationGrace))
		default:
			dc.creationGrace = d
		}
	}
	return errs
}

// TaskConfig is the decoded `config { ... }` block of a ferry task.
type TaskConfig struct {
	Image     string            `codec:"image"`
	Images    map[string]string `codec:"images"`
	ForcePull bool              `codec:"force_pull"`
	// PlatformFallback lets an index without the node's variant serve the
	// best older variant the node runs.
	PlatformFallback bool          `codec:"platform_fallback"`
	PullTimeout      string        `codec:"pull_timeout"`
	Auth             TaskAuth      `codec:"auth"`
	Entrypoint       []string      `codec:"entrypoint"`
	Command          string        `codec:"command"`
	Args             []string      `codec:"args"`
	WorkDir          string        `codec:"work_dir"`
	User             string        `codec:"user"`
	Hostname         string        `codec:"hostname"`
	ReadonlyRootfs   bool          `codec:"readonly_rootfs"`
	CapAdd           []string      `codec:"cap_add"`
	CapDrop          []string      `codec:"cap_drop"`
	Mount            []MountConfig `codec:"mount"`
	Mounts           []MountConfig `codec:"mounts"`
	Volumes          []string      `codec:"volumes"`
	Ports            []string      `codec:"ports"`
	Checkpoint       Checkpoint    `codec:"checkpoint"`
}

// Checkpoint is a task's `checkpoint { ... }` block: whether the task is
// checkpointed when its allocation migrates, and restored where it lands.
type Checkpoint struct {
	Enabled          bool   `codec:"enabled"`
	TCPEstablished   bool   `codec:"tcp_established"`
	FileLocks        bool   `codec:"file_locks"`
	OnRestoreFailure string `codec:"on_restore_failure"`
	RestoreWait      string `codec:"restore_wait"`
}

// Values of checkpoint.on_restore_failure.
const (
	restoreFailureColdStart = "cold_start"
	restoreFailureFail      = "fail"
)

// TaskAuth is a task's own registry credentials.
type TaskAuth struct {
	Username string `codec:"username"`
	Password string `codec:"password"`
}

// MountConfig is one `mount { ... }` block.
type MountConfig struct {
	Type     string   `codec:"type"`
	Source   string   `codec:"source"`
	Target   string   `codec:"target"`
	Readonly bool     `codec:"readonly"`
	Options  []string `codec:"options"`
}

// taskRequest is a validated task config with its derived values.
type taskRequest struct {
	TaskConfig
	ref         image.Ref
	pullTimeout time.Duration
	mounts      []spec.Mount
	restoreWait time.Duration
}

// validateTask checks a task config against the node and Nomad's task,
// returning every problem at once with the field it concerns.
func (c *Config) validateTask(tc TaskConfig, task *drivers.TaskConfig, platform string) (*taskRequest, error) {
	req := &taskRequest{TaskConfig: tc}
	var errs []error

	name := imageFor(tc, platform)
	ref, err := image.ParseRef(name, c.InsecureRegistries)
	switch {
	case name == "":
		errs = append(errs, fmt.Errorf("image: required, unless images has an entry for this node's platform %s", platform))
	case err != nil:
		errs = append(errs, err)
	}
	req.ref = ref

	if d, err := time.ParseDuration(tc.PullTimeout); err != nil || d <= 0 {
		errs = append(errs, fmt.Errorf("pull_timeout: %q is not a positive duration; use a value such as \"5m\"", tc.PullTimeout))
	} else {
		req.pullTimeout = d
	}
	if (tc.Auth.Username == "") != (tc.Auth.Password == "") {
		errs = append(errs, errors.New("auth: set both username and password, or neither"))
	}
	if tc.WorkDir != "" && !filepath.IsAbs(tc.WorkDir) {
		errs = append(errs, fmt.Errorf("work_dir: %q must be an absolute path inside the container", tc.WorkDir))
	}
	if err := spec.ValidateCaps(tc.CapAdd, tc.CapDrop); err != nil {
		errs = append(errs, err)
	}
	for i, m := range append(append([]MountConfig{}, tc.Mount...), tc.Mounts...) {
		sm, err := m.toSpec()
		if err != nil {
			errs = append(errs, fmt.Errorf("mount[%d]: %w", i, err))
			continue
		}
		req.mounts = append(req.mounts, sm)
	}
	for _, v := range tc.Volumes {
		m, err := spec.ParseVolume(v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		req.mounts = append(req.mounts, m)
	}
	errs = append(errs, validatePorts(tc.Ports, task))
	if tc.Checkpoint.Enabled {
		switch tc.Checkpoint.OnRestoreFailure {
		case "", restoreFailureColdStart, restoreFailureFail:
		default:
			errs = append(errs, fmt.Errorf("checkpoint.on_restore_failure: %q is not supported; use \"cold_start\" or \"fail\"", tc.Checkpoint.OnRestoreFailure))
		}
		wait := tc.Checkpoint.RestoreWait
		if wait == "" {
			wait = "2m"
		}
		if d, err := time.ParseDuration(wait); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("checkpoint.restore_wait: %q is not a positive duration; use a value such as \"2m\"", wait))
		} else {
			req.restoreWait = d
		}
	}
	return req, errors.Join(errs...)
}

// imageFor is the image a task runs on a node of platform: its `images`
// entry for the node's architecture (keyed like Nomad's cpu.arch), else
// `image`.
func imageFor(tc TaskConfig, platform string) string {
	if p, err := parsePlatform(platform); err == nil {
		if ref, ok := tc.Images[p.Architecture]; ok {
			return ref
		}
	}
	return tc.Image
}

func (m MountConfig) toSpec() (spec.Mount, error) {
	switch m.Type {
	case "bind":
		if !filepath.IsAbs(m.Source) {
			return spec.Mount{}, fmt.Errorf("source: %q must be an absolute path on the client", m.Source)
		}
	case "tmpfs":
	default:
		return spec.Mount{}, fmt.Errorf("type: %q is not supported; use \"bind\" or \"tmpfs\"", m.Type)
	}
	if !filepath.IsAbs(m.Target) {
		return spec.Mount{}, fmt.Errorf("target: %q must be an absolute path inside the container", m.Target)
	}
	return spec.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Readonly: m.Readonly, Options: m.Options}, nil
}

// validatePorts checks that every label in `ports` names a port of the
// group's network block: the container shares that network, so the port is
// reachable once the task listens on it.
func validatePorts(labels []string, task *drivers.TaskConfig) error {
	if len(labels) == 0 {
		return nil
	}
	known := map[string]bool{}
	if task.Resources != nil && task.Resources.Ports != nil {
		for _, p := range *task.Resources.Ports {
			known[p.Label] = true
		}
	}
	var errs []error
	for _, l := range labels {
		if !known[l] {
			errs = append(errs, fmt.Errorf("ports: %q is not a port label of the group's network block; add `port %q {}` to it", l, l))
		}
	}
	return errors.Join(errs...)
}
