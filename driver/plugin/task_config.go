package plugin

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/platforms"
	"github.com/ferry-nomad/ferry/driver/image"
	"github.com/ferry-nomad/ferry/driver/spec"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
)

// taskConfigSpec is the schema of a task's `config { ... }` block.
var taskConfigSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	// image or images: validateTask requires one for the node's platform.
	"image":             hclspec.NewAttr("image", "string", false),
	"images":            hclspec.NewAttr("images", "list(map(string))", false),
	"platform_fallback": hclspec.NewAttr("platform_fallback", "bool", false),
	"force_pull":        hclspec.NewAttr("force_pull", "bool", false),
	"pull_timeout":      hclspec.NewDefault(hclspec.NewAttr("pull_timeout", "string", false), hclspec.NewLiteral(`"5m"`)),
	"auth": hclspec.NewBlock("auth", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"username": hclspec.NewAttr("username", "string", false),
		"password": hclspec.NewAttr("password", "string", false),
	})),
	"entrypoint":      hclspec.NewAttr("entrypoint", "list(string)", false),
	"command":         hclspec.NewAttr("command", "string", false),
	"args":            hclspec.NewAttr("args", "list(string)", false),
	"work_dir":        hclspec.NewAttr("work_dir", "string", false),
	"user":            hclspec.NewAttr("user", "string", false),
	"hostname":        hclspec.NewAttr("hostname", "string", false),
	"readonly_rootfs": hclspec.NewAttr("readonly_rootfs", "bool", false),
	"cap_add":         hclspec.NewAttr("cap_add", "list(string)", false),
	"cap_drop":        hclspec.NewAttr("cap_drop", "list(string)", false),
	"mount":           hclspec.NewBlockList("mount", mountSpec),
	"mounts":          hclspec.NewBlockList("mounts", mountSpec),
	"volumes":         hclspec.NewAttr("volumes", "list(string)", false),
	"ports":           hclspec.NewAttr("ports", "list(string)", false),
	"checkpoint": hclspec.NewBlock("checkpoint", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"enabled":            hclspec.NewAttr("enabled", "bool", false),
		"tcp_established":    hclspec.NewAttr("tcp_established", "bool", false),
		"file_locks":         hclspec.NewAttr("file_locks", "bool", false),
		"on_restore_failure": hclspec.NewDefault(hclspec.NewAttr("on_restore_failure", "string", false), hclspec.NewLiteral(`"cold_start"`)),
		"restore_wait":       hclspec.NewDefault(hclspec.NewAttr("restore_wait", "string", false), hclspec.NewLiteral(`"2m"`)),
		"mode":               hclspec.NewDefault(hclspec.NewAttr("mode", "string", false), hclspec.NewLiteral(`"copy"`)),
		"lazy_timeout":       hclspec.NewDefault(hclspec.NewAttr("lazy_timeout", "string", false), hclspec.NewLiteral(`"10m"`)),
		"interval":           hclspec.NewAttr("interval", "string", false),
		"keep":               hclspec.NewDefault(hclspec.NewAttr("keep", "number", false), hclspec.NewLiteral("2")),
	})),
})

// TaskConfig is the decoded `config { ... }` block of a ferry task.
type TaskConfig struct {
	Image string `codec:"image"`
	// Images is written `images = { amd64 = "…" }`; Nomad's jobspec parser
	// hands it on as a list holding one map, as it does docker's labels.
	Images    imagesMap `codec:"images"`
	ForcePull bool      `codec:"force_pull"`
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

// imagesMap is `images = { amd64 = "…" }`, which Nomad's jobspec parser
// hands on as a list holding one map (the spec's list(map(string))), as it
// does the docker driver's labels. Nomad's hclutils.MapStrStr does the same,
// but its package links a test library into the driver.
type imagesMap map[string]string

// CodecEncodeSelf writes the list form.
func (m *imagesMap) CodecEncodeSelf(enc *codec.Encoder) {
	enc.MustEncode([]map[string]string{*m})
}

// CodecDecodeSelf reads the list form, merging its maps.
func (m *imagesMap) CodecDecodeSelf(dec *codec.Decoder) {
	var list []map[string]string
	dec.MustDecode(&list)
	*m = imagesMap{}
	for _, one := range list {
		maps.Copy(*m, one)
	}
}

// Checkpoint is a task's `checkpoint { ... }` block: whether the task is
// checkpointed when its allocation migrates, and restored where it lands.
type Checkpoint struct {
	Enabled          bool   `codec:"enabled"`
	TCPEstablished   bool   `codec:"tcp_established"`
	FileLocks        bool   `codec:"file_locks"`
	OnRestoreFailure string `codec:"on_restore_failure"`
	RestoreWait      string `codec:"restore_wait"`
	// Mode is "copy" (the task's memory moves before it runs again) or
	// "lazy" (it runs again at once; its memory follows: post-copy).
	Mode string `codec:"mode"`
	// LazyTimeout bounds how long a lazy move's source keeps serving the
	// task's memory.
	LazyTimeout string `codec:"lazy_timeout"`
	// Interval, when set, checkpoints the running task that often (it is
	// frozen only for the dump), keeping the newest Keep.
	Interval string `codec:"interval"`
	Keep     int    `codec:"keep"`
}

// minPeriodicInterval is the shortest checkpoint.interval: a task is
// frozen for every periodic checkpoint.
const minPeriodicInterval = 10 * time.Second

// Values of checkpoint.mode.
const (
	checkpointModeCopy = "copy"
	checkpointModeLazy = "lazy"
)

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

// mountSpec is one `mount { ... }` block of a task.
var mountSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"type":     hclspec.NewDefault(hclspec.NewAttr("type", "string", false), hclspec.NewLiteral(`"bind"`)),
	"source":   hclspec.NewAttr("source", "string", false),
	"target":   hclspec.NewAttr("target", "string", true),
	"readonly": hclspec.NewAttr("readonly", "bool", false),
	"options":  hclspec.NewAttr("options", "list(string)", false),
})

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
	lazyTimeout time.Duration
	interval    time.Duration // periodic checkpoints; 0: none
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
	if ref.LayoutDir != "" && !c.layoutAllowed(ref.LayoutDir) {
		errs = append(errs, fmt.Errorf("image: %q is a directory of this node, which the plugin does not allow: the operator may list it, or a directory above it, in the plugin's oci_layout_dirs", name))
	}
	errs = append(errs, validateImages(tc.Images)...)

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
	} else if denied, _ := spec.DisallowedCaps(tc.CapAdd, c.AllowCaps); len(denied) > 0 {
		errs = append(errs, fmt.Errorf("cap_add: %s not allowed on this node: the operator may add them to the plugin's allow_caps", strings.Join(denied, ", ")))
	}
	for i, m := range append(append([]MountConfig{}, tc.Mount...), tc.Mounts...) {
		sm, err := m.toSpec()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("mount[%d]: %w", i, err))
		case sm.Type == "bind" && !c.Volumes.Enabled:
			errs = append(errs, fmt.Errorf("mount[%d]: binding %s of this node is not allowed: the operator may set volumes { enabled = true } in the plugin's config, or offer it as a Nomad host volume", i, sm.Source))
		default:
			req.mounts = append(req.mounts, sm)
		}
	}
	for _, v := range tc.Volumes {
		m, err := spec.ParseVolume(v)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !c.Volumes.Enabled:
			errs = append(errs, fmt.Errorf("volumes: binding %s of this node is not allowed: the operator may set volumes { enabled = true } in the plugin's config, or offer it as a Nomad host volume", m.Source))
		default:
			req.mounts = append(req.mounts, m)
		}
	}
	errs = append(errs, validatePorts(tc.Ports, task))
	if tc.Checkpoint.Enabled {
		switch tc.Checkpoint.OnRestoreFailure {
		case "", restoreFailureColdStart, restoreFailureFail:
		default:
			errs = append(errs, fmt.Errorf("checkpoint.on_restore_failure: %q is not supported; use \"cold_start\" or \"fail\"", tc.Checkpoint.OnRestoreFailure))
		}
		var err error
		if req.restoreWait, err = positiveDuration("checkpoint.restore_wait", tc.Checkpoint.RestoreWait, "2m"); err != nil {
			errs = append(errs, err)
		}
		switch tc.Checkpoint.Mode {
		case "", checkpointModeCopy, checkpointModeLazy:
		default:
			errs = append(errs, fmt.Errorf("checkpoint.mode: %q is not supported; use \"copy\" (the default) or \"lazy\"", tc.Checkpoint.Mode))
		}
		if req.lazyTimeout, err = positiveDuration("checkpoint.lazy_timeout", tc.Checkpoint.LazyTimeout, "10m"); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, req.validatePeriodic()...)
	} else if tc.Checkpoint.Interval != "" {
		errs = append(errs, errors.New("checkpoint.interval: periodic checkpoints need checkpoint.enabled = true"))
	}
	return req, errors.Join(errs...)
}

// positiveDuration reads field's value, def when empty; the error names
// the field and gives def as an example.
func positiveDuration(field, value, def string) (time.Duration, error) {
	if value == "" {
		value = def
	}
	d, err := time.ParseDuration(value)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s: %q is not a positive duration; use a value such as %q", field, value, def)
	}
	return d, nil
}

// validatePeriodic reads checkpoint.interval and keep; errors name the
// field.
func (req *taskRequest) validatePeriodic() []error {
	c := req.Checkpoint
	if c.Interval == "" {
		return nil
	}
	var errs []error
	d, err := time.ParseDuration(c.Interval)
	switch {
	case err != nil || d <= 0:
		errs = append(errs, fmt.Errorf("checkpoint.interval: %q is not a positive duration; use a value such as \"30m\"", c.Interval))
	case d < minPeriodicInterval:
		errs = append(errs, fmt.Errorf("checkpoint.interval: %q is shorter than %s: the task is frozen for every checkpoint", c.Interval, minPeriodicInterval))
	default:
		req.interval = d
	}
	if c.Keep < 1 {
		errs = append(errs, fmt.Errorf("checkpoint.keep: %d must be at least 1 (the default is 2)", c.Keep))
	}
	return errs
}

// layoutAllowed reports whether an OCI layout at dir is under one of the
// plugin's oci_layout_dirs.
func (c *Config) layoutAllowed(dir string) bool {
	for _, allowed := range c.OCILayoutDirs {
		if rel, err := filepath.Rel(filepath.Clean(allowed), dir); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}

// validateImages checks that every key of `images` is an architecture as
// Nomad's cpu.arch and the image index spell it: "x86_64" would otherwise
// never match and the task would silently run `image`.
func validateImages(images map[string]string) []error {
	var errs []error
	for _, arch := range slices.Sorted(maps.Keys(images)) {
		p, err := platforms.Parse("linux/" + arch)
		switch norm := platforms.Normalize(p).Architecture; {
		case err != nil || strings.Contains(arch, "/"):
			errs = append(errs, fmt.Errorf("images: key %q is not a CPU architecture; use one such as \"amd64\" or \"arm64\"", arch))
		case norm != arch:
			errs = append(errs, fmt.Errorf("images: key %q must be written %q, as Nomad's cpu.arch spells it", arch, norm))
		case images[arch] == "":
			errs = append(errs, fmt.Errorf("images: %s: the image reference is empty", arch))
		}
	}
	return errs
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
