package plugin

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/ferry-nomad/ferry/driver/spec"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
)

// configSpec is the schema of the client's `plugin "nomad-driver-ferry"` block.
var configSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"runc_path":           hclspec.NewDefault(hclspec.NewAttr("runc_path", "string", false), hclspec.NewLiteral(`"runc"`)),
	"criu_path":           hclspec.NewDefault(hclspec.NewAttr("criu_path", "string", false), hclspec.NewLiteral(`"criu"`)),
	"data_dir":            hclspec.NewDefault(hclspec.NewAttr("data_dir", "string", false), hclspec.NewLiteral(`"/var/lib/ferry"`)),
	"state_dir":           hclspec.NewDefault(hclspec.NewAttr("state_dir", "string", false), hclspec.NewLiteral(`"/run/ferry"`)),
	"platform":            hclspec.NewAttr("platform", "string", false),
	"insecure_registries": hclspec.NewAttr("insecure_registries", "list(string)", false),
	"auth": hclspec.NewBlock("auth", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"config": hclspec.NewAttr("config", "string", false),
	})),
	"gc": hclspec.NewDefault(hclspec.NewBlock("gc", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"image":       hclspec.NewDefault(hclspec.NewAttr("image", "bool", false), hclspec.NewLiteral("true")),
		"image_delay": hclspec.NewDefault(hclspec.NewAttr("image_delay", "string", false), hclspec.NewLiteral(`"3m"`)),
		"dangling_containers": hclspec.NewDefault(hclspec.NewBlock("dangling_containers", false, danglingContainersSpec),
			hclspec.NewLiteral(danglingContainersDefault)),
		"checkpoints": hclspec.NewDefault(hclspec.NewBlock("checkpoints", false, checkpointsGCSpec),
			hclspec.NewLiteral(checkpointsGCDefault)),
	})), hclspec.NewLiteral(`{ image = true, image_delay = "3m", dangling_containers = `+danglingContainersDefault+`, checkpoints = `+checkpointsGCDefault+` }`)),
	"nomad": hclspec.NewBlock("nomad", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"address": hclspec.NewAttr("address", "string", false),
		"token":   hclspec.NewAttr("token", "string", false),
	})),
	"consul": hclspec.NewBlock("consul", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"address": hclspec.NewAttr("address", "string", false),
		"token":   hclspec.NewAttr("token", "string", false),
	})),
	"checkpoint_dir": hclspec.NewAttr("checkpoint_dir", "string", false),
	// What jobs may ask of the node: closed by default, opened by the
	// operator (as the docker driver's volumes and allow_caps).
	"volumes": hclspec.NewDefault(hclspec.NewBlock("volumes", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"enabled": hclspec.NewDefault(hclspec.NewAttr("enabled", "bool", false), hclspec.NewLiteral("false")),
	})), hclspec.NewLiteral(`{ enabled = false }`)),
	"allow_caps":      hclspec.NewDefault(hclspec.NewAttr("allow_caps", "list(string)", false), hclspec.NewLiteral(defaultAllowCaps)),
	"oci_layout_dirs": hclspec.NewAttr("oci_layout_dirs", "list(string)", false),
	"transfer": hclspec.NewDefault(hclspec.NewBlock("transfer", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"listen":              hclspec.NewDefault(hclspec.NewAttr("listen", "string", false), hclspec.NewLiteral(`"`+defaultTransferListen+`"`)),
		"advertise":           hclspec.NewAttr("advertise", "string", false),
		"ca_file":             hclspec.NewAttr("ca_file", "string", false),
		"cert_file":           hclspec.NewAttr("cert_file", "string", false),
		"key_file":            hclspec.NewAttr("key_file", "string", false),
		"server_name":         hclspec.NewAttr("server_name", "string", false),
		"idle_timeout":        hclspec.NewAttr("idle_timeout", "string", false),
		"max_connections":     hclspec.NewAttr("max_connections", "number", false),
		"max_checkpoint_size": hclspec.NewAttr("max_checkpoint_size", "string", false),
		"min_free_space":      hclspec.NewAttr("min_free_space", "string", false),
		"page_server_ports":   hclspec.NewDefault(hclspec.NewAttr("page_server_ports", "string", false), hclspec.NewLiteral(`"`+defaultPageServerPorts+`"`)),
	})), hclspec.NewLiteral(`{ listen = "`+defaultTransferListen+`" }`)),
	// What an image may take of the node's disk.
	"images": hclspec.NewBlock("images", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"max_layer_size": hclspec.NewAttr("max_layer_size", "string", false),
		"min_free_space": hclspec.NewAttr("min_free_space", "string", false),
	})),
})

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
	// Volumes.Enabled lets tasks bind-mount host paths (mount blocks of
	// type "bind", volumes); Nomad's host volumes (volume_mount) need not.
	Volumes Volumes `codec:"volumes"`
	// AllowCaps are the capabilities cap_add may ask for ("all": any).
	AllowCaps []string `codec:"allow_caps"`
	// OCILayoutDirs are the host directories under which an image may be
	// named as an OCI layout ("oci:DIR"); none by default.
	OCILayoutDirs []string `codec:"oci_layout_dirs"`
	// Images bounds what pulling an image may write.
	Images Images `codec:"images"`
}

// Images is the `images { max_layer_size, min_free_space }` block: sizes
// such as "8GiB"; empty for image.DefaultMaxLayerSize and
// image.DefaultMinFreeSpace.
type Images struct {
	MaxLayerSize string `codec:"max_layer_size"`
	MinFreeSpace string `codec:"min_free_space"`

	maxLayerSize, minFreeSpace int64
}

// validate parses the sizes; errors name the field.
func (i *Images) validate() []error {
	var errs []error
	var err error
	if i.maxLayerSize, err = parseSize("images.max_layer_size", i.MaxLayerSize); err != nil {
		errs = append(errs, err)
	}
	if i.minFreeSpace, err = parseSize("images.min_free_space", i.MinFreeSpace); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// parseSize reads a size such as "512MiB" or "8GB" for field; empty is 0,
// the field's default.
func parseSize(field, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return 0, fmt.Errorf("%s: %q is not a size; write e.g. \"512MiB\" or \"8GiB\"", field, v)
	}
	return int64(n), nil
}

// Volumes is the `volumes { enabled }` block.
type Volumes struct {
	Enabled bool `codec:"enabled"`
}

// defaultAllowCaps is allow_caps when the plugin block does not set it:
// Docker's default capability set.
var defaultAllowCaps = `["` + strings.Join(spec.DefaultCaps(), `", "`) + `"]`

// Transfer is the `transfer { ... }` block: where the driver serves its
// checkpoints to the nodes that restore them, and receives the ones pushed
// to it, over mutual TLS with the cluster's CA. Without the TLS files a
// checkpoint is restored only on the node that took it or from a shared
// checkpoint_dir.
//
// The limits bound what one transfer may take: idle_timeout how long a peer
// may stall, max_connections the connections served at once, and the sizes
// max_checkpoint_size and min_free_space what a checkpoint received here
// may be and must leave free; empty or 0 keeps transfer's defaults.
//
// page_server_ports are the TCP ports where a lazy move's source serves the
// task's memory to its destination (CRIU's page server, on every address
// of the node, over mutual TLS with the same files): one port per move
// under way.
type Transfer struct {
	Listen            string `codec:"listen"`
	Advertise         string `codec:"advertise"`
	CAFile            string `codec:"ca_file"`
	CertFile          string `codec:"cert_file"`
	KeyFile           string `codec:"key_file"`
	ServerName        string `codec:"server_name"`
	IdleTimeout       string `codec:"idle_timeout"`
	MaxConnections    int    `codec:"max_connections"`
	MaxCheckpointSize string `codec:"max_checkpoint_size"`
	MinFreeSpace      string `codec:"min_free_space"`
	PageServerPorts   string `codec:"page_server_ports"`

	limits    transfer.Limits
	pagePorts portRange
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
	errs = append(errs, t.validateLimits()...)
	if t.PageServerPorts == "" {
		t.PageServerPorts = defaultPageServerPorts
	}
	var err error
	if t.pagePorts, err = parsePortRange("transfer.page_server_ports", t.PageServerPorts); err != nil {
		errs = append(errs, err)
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

// validateLimits reads the transfer limits into t.limits; errors name the
// field.
func (t *Transfer) validateLimits() []error {
	var errs []error
	t.limits = transfer.Limits{MaxConnections: t.MaxConnections}
	if t.IdleTimeout != "" {
		d, err := time.ParseDuration(t.IdleTimeout)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("transfer.idle_timeout: %q must be a positive duration, e.g. \"30s\"", t.IdleTimeout))
		}
		t.limits.IdleTimeout = d
	}
	if t.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("transfer.max_connections: %d must be positive, or 0 for the default (%d)", t.MaxConnections, transfer.DefaultMaxConnections))
	}
	var err error
	if t.limits.MaxCheckpointSize, err = parseSize("transfer.max_checkpoint_size", t.MaxCheckpointSize); err != nil {
		errs = append(errs, err)
	}
	if t.limits.MinFreeSpace, err = parseSize("transfer.min_free_space", t.MinFreeSpace); err != nil {
		errs = append(errs, err)
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
	Checkpoints        CheckpointsGC  `codec:"checkpoints"`

	imageDelay time.Duration
}

// danglingContainersSpec is the `gc { dangling_containers { ... } }` block.
var danglingContainersSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"enabled":        hclspec.NewDefault(hclspec.NewAttr("enabled", "bool", false), hclspec.NewLiteral("true")),
	"period":         hclspec.NewDefault(hclspec.NewAttr("period", "string", false), hclspec.NewLiteral(`"5m"`)),
	"creation_grace": hclspec.NewDefault(hclspec.NewAttr("creation_grace", "string", false), hclspec.NewLiteral(`"5m"`)),
	"dry_run":        hclspec.NewDefault(hclspec.NewAttr("dry_run", "bool", false), hclspec.NewLiteral("false")),
})

const danglingContainersDefault = `{ enabled = true, period = "5m", creation_grace = "5m", dry_run = false }`

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
	errs = append(errs, c.GC.Checkpoints.validate()...)
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
	errs = append(errs, c.Images.validate()...)
	if _, err := spec.DisallowedCaps(nil, c.AllowCaps); err != nil {
		errs = append(errs, err)
	}
	for _, d := range c.OCILayoutDirs {
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("oci_layout_dirs: %q must be an absolute path", d))
		}
	}
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
