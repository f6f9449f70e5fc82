package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Environment variables that override the file.
const (
	EnvAdvertise = "NOMAD_ADDR_http" // the system job's port labelled "http"
	EnvNomad     = "NOMAD_ADDR"
	EnvConsul    = "CONSUL_HTTP_ADDR"
)

// Load builds the configuration from args (the agent command's arguments),
// the file that -config names in them, and the environment as getenv
// (os.Getenv if nil) reads it: defaults, then the file, then the
// environment, then the flags given. It returns every problem at once.
// With -h or -help, it prints the flags and returns flag.ErrHelp.
func Load(args []string, getenv func(string) string) (*Config, error) {
	return parse("agent", args, getenv)
}

// LoadTool is Load for the operator commands (plan, status): the same file,
// environment and flags, without the fields only an agent needs.
func LoadTool(command string, args []string, getenv func(string) string) (*Config, error) {
	return parse(command, args, getenv)
}

func parse(command string, args []string, getenv func(string) string) (*Config, error) {
	agent := command == "agent"
	if getenv == nil {
		getenv = os.Getenv
	}
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	path := fs.String("config", "", "HCL configuration `file`; the environment and these flags override it")
	keep := func(string) bool { return true }
	if !agent {
		// The operator commands read Consul and Nomad, with the policy
		// and keys of the file.
		keep = func(name string) bool { return name == "nomad" || name == "consul" }
	}
	flags := defineFlags(fs, keep)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: %s takes only flags (the file is -config FILE)", fs.Arg(0), command)
	}

	cfg := Default()
	cfg.File = *path
	var errs []error
	if *path != "" {
		var fatal bool
		errs, fatal = loadFile(*path, &cfg)
		if fatal {
			return nil, errors.Join(errs...)
		}
	}
	for _, e := range []struct {
		name string
		dst  *string
	}{
		{EnvAdvertise, &cfg.Advertise},
		{EnvNomad, &cfg.Nomad.Address},
		{EnvConsul, &cfg.Consul.Address},
	} {
		if v := getenv(e.name); v != "" {
			*e.dst = v
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if set := flags.set[f.Name]; set != nil {
			set(&cfg)
		}
	})

	errs = append(errs, cfg.validate(agent)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &cfg, nil
}

// flagValues holds what the flags parse into, and for each flag how to
// copy its value into a configuration; only flags given are copied.
type flagValues struct {
	v   Config
	set map[string]func(*Config)
}

// defineFlags defines the flags that keep accepts.
func defineFlags(fs *flag.FlagSet, keep func(name string) bool) *flagValues {
	f := &flagValues{v: Default(), set: map[string]func(*Config){}}
	str := func(name string, field func(*Config) *string, usage string) {
		if keep(name) {
			bind(fs, f, fs.StringVar, name, field, usage)
		}
	}
	dur := func(name string, field func(*Config) *time.Duration, usage string) {
		if keep(name) {
			bind(fs, f, fs.DurationVar, name, field, usage)
		}
	}
	boolean := func(name string, field func(*Config) *bool, usage string) {
		if keep(name) {
			bind(fs, f, fs.BoolVar, name, field, usage)
		}
	}

	str("listen", func(c *Config) *string { return &c.Listen }, "`host:port` to serve /metrics and /v1/status on (listen)")
	str("advertise", func(c *Config) *string { return &c.Advertise }, "`host:port` other nodes reach this agent at (advertise; $"+EnvAdvertise+" overrides the file)")
	str("node-id", func(c *Config) *string { return &c.NodeID }, "this Nomad node's `ID` (node_id)")
	str("node-name", func(c *Config) *string { return &c.NodeName }, "this Nomad node's `name` (node_name)")
	str("nomad", func(c *Config) *string { return &c.Nomad.Address }, "Nomad `URL` (nomad.address; $"+EnvNomad+" overrides the file)")
	str("consul", func(c *Config) *string { return &c.Consul.Address }, "Consul `address` (consul.address; $"+EnvConsul+" overrides the file)")
	dur("sample-interval", func(c *Config) *time.Duration { return &c.Sample.Interval }, "how often the node is sampled (sample.interval)")
	dur("sample-window", func(c *Config) *time.Duration { return &c.Sample.Window }, "samples are averaged over this window (sample.window)")
	str("sample-source", func(c *Config) *string { return &c.Sample.Source }, "what load is measured from, `source`: \"allocations\" or \"host\" (sample.source)")
	boolean("rebalance", func(c *Config) *bool { return &c.Rebalance.Enabled }, "move work off hot nodes; -rebalance=false turns it off (rebalance.enabled)")
	boolean("dry-run", func(c *Config) *bool { return &c.Rebalance.DryRun }, "decide and log moves, never make them (rebalance.dry_run)")
	dur("rebalance-interval", func(c *Config) *time.Duration { return &c.Rebalance.Interval }, "one planning round per interval (rebalance.interval)")
	return f
}

// bind defines a flag whose default is the field's default and records how
// to copy its value into a configuration.
func bind[T any](fs *flag.FlagSet, f *flagValues, define func(p *T, name string, value T, usage string), name string, field func(*Config) *T, usage string) {
	define(field(&f.v), name, *field(&f.v), usage)
	f.set[name] = func(c *Config) { *field(c) = *field(&f.v) }
}

// The file's shape. Every attribute is a pointer, or an expression, so that
// one left out keeps its default; durations are strings parsed here.
type fileConfig struct {
	Listen    *string `hcl:"listen,optional"`
	Advertise *string `hcl:"advertise,optional"`
	NodeID    *string `hcl:"node_id,optional"`
	NodeName  *string `hcl:"node_name,optional"`

	Nomad     *fileAddress   `hcl:"nomad,block"`
	Consul    *fileAddress   `hcl:"consul,block"`
	Sample    *fileSample    `hcl:"sample,block"`
	Rebalance *fileRebalance `hcl:"rebalance,block"`
}

type fileAddress struct {
	Address *string `hcl:"address,optional"`
}

type fileSample struct {
	Interval hcl.Expression `hcl:"interval,optional"`
	Window   hcl.Expression `hcl:"window,optional"`
	Source   *string        `hcl:"source,optional"`
	Prefix   *string        `hcl:"prefix,optional"`
}

type fileRebalance struct {
	Enabled     *bool          `hcl:"enabled,optional"`
	DryRun      *bool          `hcl:"dry_run,optional"`
	Interval    hcl.Expression `hcl:"interval,optional"`
	MoveTimeout hcl.Expression `hcl:"move_timeout,optional"`
	LockKey     *string        `hcl:"lock_key,optional"`
	StateKey    *string        `hcl:"state_key,optional"`

	OnlinePriority *int            `hcl:"online_priority,optional"`
	Consecutive    *int            `hcl:"consecutive,optional"`
	Cooldown       hcl.Expression  `hcl:"cooldown,optional"`
	Thresholds     []fileThreshold `hcl:"threshold,block"`
	Limits         *fileLimits     `hcl:"limits,block"`
}

type fileThreshold struct {
	Resource string   `hcl:"resource,label"`
	High     *float64 `hcl:"high,optional"`
	Low      *float64 `hcl:"low,optional"`
	Body     hcl.Body `hcl:",body"` // where the block is, for errors
}

type fileLimits struct {
	InFlight *int `hcl:"in_flight,optional"`
	PerNode  *int `hcl:"per_node,optional"`
	PerJob   *int `hcl:"per_job,optional"`
	PerHour  *int `hcl:"per_hour,optional"`
	PerRound *int `hcl:"per_round,optional"`
}

// loadFile reads the file at path over cfg. Every error names where in the
// file it is; fatal means the file could not be read or parsed at all.
func loadFile(path string, cfg *Config) (errs []error, fatal bool) {
	src, err := os.ReadFile(path)
	if err != nil {
		return []error{fmt.Errorf("-config: %w", err)}, true
	}
	file, diags := hclparse.NewParser().ParseHCL(src, path)
	if diags.HasErrors() {
		return diagErrors(path, diags), true
	}
	var f fileConfig
	errs = diagErrors(path, gohcl.DecodeBody(file.Body, nil, &f))
	labels := thresholdLabels(file.Body)

	set(&cfg.Listen, f.Listen)
	set(&cfg.Advertise, f.Advertise)
	set(&cfg.NodeID, f.NodeID)
	set(&cfg.NodeName, f.NodeName)
	if f.Nomad != nil {
		set(&cfg.Nomad.Address, f.Nomad.Address)
	}
	if f.Consul != nil {
		set(&cfg.Consul.Address, f.Consul.Address)
	}
	if s := f.Sample; s != nil {
		errs = append(errs, setDuration(path, &cfg.Sample.Interval, s.Interval, "sample.interval")...)
		errs = append(errs, setDuration(path, &cfg.Sample.Window, s.Window, "sample.window")...)
		set(&cfg.Sample.Source, s.Source)
		set(&cfg.Sample.Prefix, s.Prefix)
	}
	if r := f.Rebalance; r != nil {
		rc := &cfg.Rebalance
		set(&rc.Enabled, r.Enabled)
		set(&rc.DryRun, r.DryRun)
		errs = append(errs, setDuration(path, &rc.Interval, r.Interval, "rebalance.interval")...)
		errs = append(errs, setDuration(path, &rc.MoveTimeout, r.MoveTimeout, "rebalance.move_timeout")...)
		set(&rc.LockKey, r.LockKey)
		set(&rc.StateKey, r.StateKey)

		p := &rc.Policy
		set(&p.OnlinePriority, r.OnlinePriority)
		set(&p.Consecutive, r.Consecutive)
		errs = append(errs, setDuration(path, &p.Cooldown, r.Cooldown, "rebalance.cooldown")...)
		seen := map[string]string{}
		for _, t := range r.Thresholds {
			label, ok := labels[t.Body]
			if !ok {
				label = t.Body.MissingItemRange()
			}
			at := where(path, label)
			name := fmt.Sprintf("rebalance.threshold %q", t.Resource)
			var dst *planner.Threshold
			switch t.Resource {
			case "cpu":
				dst = &p.Thresholds.CPU
			case "memory":
				dst = &p.Thresholds.Memory
			default:
				errs = append(errs, fmt.Errorf(`%s: %s: unknown resource; thresholds are "cpu" and "memory"`, at, name))
				continue
			}
			if prev, dup := seen[t.Resource]; dup {
				errs = append(errs, fmt.Errorf("%s: %s: written twice; the first is at %s", at, name, prev))
				continue
			}
			seen[t.Resource] = at
			set(&dst.High, t.High)
			set(&dst.Low, t.Low)
		}
		if l := r.Limits; l != nil {
			set(&p.Limits.InFlight, l.InFlight)
			set(&p.Limits.PerNode, l.PerNode)
			set(&p.Limits.PerJob, l.PerJob)
			set(&p.Limits.PerHour, l.PerHour)
			set(&p.Limits.PerRound, l.PerRound)
		}
	}
	return errs, false
}

func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// setDuration parses a duration written as a string, e.g. "30s". An
// attribute left out is a null expression and changes nothing.
func setDuration(path string, dst *time.Duration, expr hcl.Expression, name string) []error {
	if expr == nil {
		return nil
	}
	var s *string
	if diags := gohcl.DecodeExpression(expr, nil, &s); diags.HasErrors() {
		return diagErrors(path, diags)
	}
	if s == nil {
		return nil
	}
	d, err := time.ParseDuration(*s)
	if err != nil {
		return []error{fmt.Errorf(`%s: %s: %q is not a duration, e.g. "30s" or "10m"`, where(path, expr.Range()), name, *s)}
	}
	*dst = d
	return nil
}

// thresholdLabels maps the body of each threshold block in the file to
// where its label is, for errors about the label.
func thresholdLabels(body hcl.Body) map[hcl.Body]hcl.Range {
	labels := map[hcl.Body]hcl.Range{}
	root, ok := body.(*hclsyntax.Body)
	if !ok {
		return labels
	}
	for _, r := range root.Blocks {
		if r.Type != "rebalance" {
			continue
		}
		for _, t := range r.Body.Blocks {
			if t.Type == "threshold" && len(t.LabelRanges) > 0 {
				labels[t.Body] = t.LabelRanges[0]
			}
		}
	}
	return labels
}

// diagErrors turns HCL's errors into one error each, starting with
// file:line,column. Of several errors at one place, only the first is
// kept: the others follow from it.
func diagErrors(path string, diags hcl.Diagnostics) []error {
	var errs []error
	seen := map[string]bool{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		at := path
		if d.Subject != nil {
			at = where(path, *d.Subject)
			if seen[at] {
				continue
			}
			seen[at] = true
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += "; " + d.Detail
		}
		errs = append(errs, fmt.Errorf("%s: %s", at, msg))
	}
	return errs
}

// where is a position in the file as file:line,column.
func where(path string, r hcl.Range) string {
	if r.Filename != "" {
		path = r.Filename
	}
	return fmt.Sprintf("%s:%d,%d", path, r.Start.Line, r.Start.Column)
}
