package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/shoenig/test/must"
)

// required are the flags without which no configuration is valid.
var required = []string{"-advertise", "10.0.0.1:4700", "-node-id", "node-1"}

// withRequired is Default with what required sets.
func withRequired() Config {
	c := Default()
	c.Advertise, c.NodeID = "10.0.0.1:4700", "node-1"
	return c
}

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// writeFile writes src to a file named companion.hcl in a new directory and
// returns its path.
func writeFile(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "companion.hcl")
	must.NoError(t, os.WriteFile(path, []byte(src), 0o600))
	return path
}

func TestDefault(t *testing.T) {
	c := Default()
	must.Eq(t, "127.0.0.1:4700", c.Listen)
	must.Eq(t, "", c.Advertise)
	must.Eq(t, "http://127.0.0.1:4646", c.Nomad.Address)
	must.Eq(t, "127.0.0.1:8500", c.Consul.Address)
	must.Eq(t, Sample{Interval: 5 * time.Second, Window: 30 * time.Second, Source: load.SourceAllocations, Prefix: sdk.PrefixNodes,
		Heartbeat: time.Minute, DeadBand: 0.05}, c.Sample)
	must.Eq(t, Rebalance{
		Enabled: true, Interval: 30 * time.Second, MoveTimeout: 10 * time.Minute,
		LockKey: "ferry/leader", StateKey: "ferry/planner/state",
		Policy: planner.DefaultConfig(),
	}, c.Rebalance)

	// Valid once the node says what only it can.
	err := c.Validate()
	must.ErrorContains(t, err, "advertise (-advertise, NOMAD_ADDR_http): required")
	must.ErrorContains(t, err, "node_id (-node-id): required")
	must.Len(t, 2, unjoin(err))
	c = withRequired()
	must.NoError(t, c.Validate())

	// Without a file, or with an empty one, Load is the defaults.
	got, err := Load(required, env(nil))
	must.NoError(t, err)
	must.Eq(t, withRequired(), *got)
	empty := writeFile(t, "")
	got, err = Load(append([]string{"-config", empty}, required...), env(nil))
	must.NoError(t, err)
	want := withRequired()
	want.File = empty // which file was read
	must.Eq(t, want, *got)
}

// TestExample checks that example.hcl writes every field, each at its
// default.
func TestExample(t *testing.T) {
	got, err := Load([]string{"-config", "example.hcl"}, env(map[string]string{EnvAdvertise: "10.0.0.5:4700"}))
	must.NoError(t, err)
	want := Default()
	want.Advertise = "10.0.0.5:4700" // commented out in the file: the system job's port
	want.NodeID = "9c0e1a5e-3f4b-4d7a-8c2e-6b1f0d9e7a21"
	want.File = "example.hcl"
	must.Eq(t, want, *got)

	// Every field is written, but advertise and the capacity blocks', which
	// are commented out (TestExampleCapacity).
	var missing []field.Path
	for p := range schemaPaths() {
		if !writtenPaths(t, "example.hcl")[p] && p != "advertise" && !strings.HasPrefix(string(p), "capacity ") {
			missing = append(missing, p)
		}
	}
	must.SliceEmpty(t, missing, must.Sprint("example.hcl lacks these"))
}

// TestExampleCapacity checks the capacity blocks that end example.hcl,
// commented out: uncommented, they are valid, write every field of a
// capacity block between them, and the "default" one is at the defaults.
func TestExampleCapacity(t *testing.T) {
	src, err := os.ReadFile("example.hcl")
	must.NoError(t, err)
	start := strings.Index(string(src), "\n# capacity \"default\" {\n")
	must.Positive(t, start, must.Sprint(`example.hcl ends without a commented-out capacity "default" block`))
	var blocks strings.Builder
	for _, line := range strings.Split(string(src[start+1:]), "\n") {
		line, commented := strings.CutPrefix(line, "#")
		must.True(t, commented || line == "", must.Sprintf("not commented out: %q", line))
		blocks.WriteString(strings.TrimPrefix(line, " ") + "\n")
	}
	file := writeFile(t, blocks.String())

	got, err := Load(append([]string{"-config", file}, required...), env(nil))
	must.NoError(t, err)
	gpu := capacity.DefaultPolicy()
	gpu.Max = 4
	gpu.Target = capacity.Target{Command: &capacity.Command{
		ScaleOut:     []string{"/usr/local/bin/add-nodes", "gpu"},
		ScaleIn:      []string{"/usr/local/bin/remove-node"},
		StartTimeout: capacity.DefaultStartTimeout,
	}}
	must.Eq(t, map[string]capacity.Policy{"default": capacity.DefaultPolicy(), "gpu": gpu}, got.Capacity)

	written := anyPool(writtenPaths(t, file))
	var missing []field.Path
	for p := range schemaPaths() {
		if strings.HasPrefix(string(p), "capacity ") && !written[p] {
			missing = append(missing, p)
		}
	}
	must.SliceEmpty(t, missing, must.Sprint("example.hcl's capacity blocks lack these"))
}

// schemaPaths are the names of every attribute in the file's schema, read
// from the types. The blocks of a map, which take any label, are named by
// the label's name: capacity "<pool>".min.
func schemaPaths() map[field.Path]bool {
	paths := map[field.Path]bool{}
	var walk func(t reflect.Type, at field.Path)
	walk = func(t reflect.Type, at field.Path) {
		for _, f := range fieldsOf(t) {
			ft, p := t.FieldByIndex(f.index).Type, at.Child(f.name)
			switch {
			case !f.block:
				paths[p] = true
			case f.label == "":
				walk(ft, p)
			case ft.Kind() == reflect.Map:
				walk(ft.Elem(), p.Label("<"+f.label+">"))
			default:
				names, index := labelsOf(ft)
				for _, l := range names {
					lt := ft.Field(index[l]).Type
					if lt.Kind() == reflect.Pointer {
						lt = lt.Elem()
					}
					walk(lt, p.Label(l))
				}
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return paths
}

// anyPool names the attributes of every capacity block as schemaPaths
// does: capacity "gpu".min is capacity "<pool>".min.
func anyPool(paths map[field.Path]bool) map[field.Path]bool {
	pool := regexp.MustCompile(`^capacity "[^"]*"`)
	out := map[field.Path]bool{}
	for p := range paths {
		out[field.Path(pool.ReplaceAllString(string(p), `capacity "<pool>"`))] = true
	}
	return out
}

// pathsOf are the names of the attributes c holds.
func pathsOf(c *Config) map[field.Path]bool {
	paths := map[field.Path]bool{}
	for p := range c.fields() {
		paths[p] = true
	}
	return paths
}

// writtenPaths are the names of the attributes the file at path writes,
// read from its syntax rather than decoded.
func writtenPaths(t *testing.T, path string) map[field.Path]bool {
	t.Helper()
	file, diags := hclparse.NewParser().ParseHCLFile(path)
	must.False(t, diags.HasErrors(), must.Sprint(diags))
	paths := map[field.Path]bool{}
	var walk func(b *hclsyntax.Body, at field.Path)
	walk = func(b *hclsyntax.Body, at field.Path) {
		for name := range b.Attributes {
			paths[at.Child(name)] = true
		}
		for _, blk := range b.Blocks {
			p := at.Child(blk.Type)
			for _, l := range blk.Labels {
				p = p.Label(l)
			}
			walk(blk.Body, p)
		}
	}
	walk(file.Body.(*hclsyntax.Body), "")
	return paths
}

// everything is a file that changes every field from its default.
const everything = `
listen    = "127.0.0.1:4800"
advertise = "10.0.0.2:4800"
node_id   = "file-node"
node_name = "file-name"
nomad {
  address    = "https://nomad.service:4646"
  token      = "file-nomad-token"
  token_file = "/etc/ferry/nomad.token"
}
consul {
  address    = "https://consul.service:8501"
  token      = "file-consul-token"
  token_file = "/etc/ferry/consul.token"
}
sample {
  interval  = "2s"
  window    = "1m"
  source    = "host"
  prefix    = "cluster/nodes/"
  heartbeat = "2m"
  dead_band = 0.1
}
rebalance {
  enabled         = false
  dry_run         = true
  interval        = "1m"
  move_timeout    = "15m"
  lock_key        = "cluster/leader"
  state_key       = "cluster/state"
  online_priority = 60
  consecutive     = 5
  cooldown        = "1h"
  threshold "cpu" {
    high = 0.9
    low  = 0.5
  }
  threshold "memory" {
    high = 0.95
    low  = 0.6
  }
  limits {
    in_flight = 8
    per_node  = 2
    per_job   = 3
    per_hour  = 60
    per_round = 2
  }
}
capacity "batch" {
  min           = 2
  max           = 20
  interval      = "1m"
  scale_in_idle = "5m"
  target "eligibility" {}
}
capacity "gpu" {
  min           = 0
  max           = 4
  interval      = "45s"
  scale_in_idle = "10m"
  target "command" {
    scale_out     = ["/usr/local/bin/add-nodes", "gpu"]
    scale_in      = ["/usr/local/bin/remove-node"]
    start_timeout = "15m"
  }
}
`

// everythingEmpty are everything's capacity blocks, written empty: their
// defaults.
const everythingEmpty = `
capacity "batch" {}
capacity "gpu" {
  target "command" {}
}
`

// TestEveryField checks that every field of the schema is reachable: from
// the file, which here writes each one, and, for those that have them, from
// their flag and environment variable.
func TestEveryField(t *testing.T) {
	schema := schemaPaths()
	file := writeFile(t, everything)
	written := writtenPaths(t, file)
	must.Eq(t, schema, anyPool(written))

	// Each field the file writes lands, each at a value not its default:
	// for a capacity block, that of the same block written empty.
	got := Default()
	errs, fatal := loadFile(file, &got)
	must.False(t, fatal)
	must.SliceEmpty(t, errs)
	must.Eq(t, written, pathsOf(&got))
	def := Default()
	errs, fatal = loadFile(writeFile(t, everythingEmpty), &def)
	must.False(t, fatal)
	must.SliceEmpty(t, errs)
	defaults := def.fields()
	for p, v := range got.fields() {
		if reflect.DeepEqual(v.Interface(), defaults[p].Interface()) {
			t.Errorf("%s: the file's %v did not land", p, v.Interface())
		}
	}

	// Each flag and environment variable, given a value other than the
	// file's, sets its field to it.
	base := withRequired()
	// Values other than the file's; with a token, no token_file is read.
	base.Nomad.Token, base.Consul.Token = "flag-nomad-token", "flag-consul-token"
	base.Nomad.TokenFile, base.Consul.TokenFile = "/run/nomad.token", "/run/consul.token"
	values := base.fields()
	for _, o := range overrides {
		must.True(t, schema[o.field], must.Sprintf("%+v sets no field of the file", o))
		value := fmt.Sprint(values[o.field].Interface())
		check := func(how string, args []string, kv map[string]string) {
			t.Helper()
			cfg, err := Load(append([]string{"-config", file}, args...), env(kv))
			must.NoError(t, err, must.Sprint(how))
			must.Eq(t, values[o.field].Interface(), cfg.fields()[o.field].Interface(), must.Sprint(how))
		}
		if o.flag != "" {
			check("-"+o.flag, []string{"-" + o.flag + "=" + value}, nil)
		}
		if o.env != "" {
			check(o.env, nil, map[string]string{o.env: value})
		}
	}
}

func TestPrecedence(t *testing.T) {
	fromFile := Config{
		Listen: "127.0.0.1:4800", Advertise: "10.0.0.2:4800",
		NodeID: "file-node", NodeName: "file-name",
		Nomad:  Nomad{Address: "https://nomad.service:4646", Token: "file-nomad-token", TokenFile: "/etc/ferry/nomad.token"},
		Consul: Consul{Address: "https://consul.service:8501", Token: "file-consul-token", TokenFile: "/etc/ferry/consul.token"},
		Sample: Sample{Interval: 2 * time.Second, Window: time.Minute, Source: load.SourceHost, Prefix: "cluster/nodes/",
			Heartbeat: 2 * time.Minute, DeadBand: 0.1},
		Rebalance: Rebalance{
			Enabled: false, DryRun: true, Interval: time.Minute, MoveTimeout: 15 * time.Minute,
			LockKey: "cluster/leader", StateKey: "cluster/state",
			Policy: planner.Config{
				Thresholds: planner.Thresholds{
					CPU:    planner.Threshold{High: 0.9, Low: 0.5},
					Memory: planner.Threshold{High: 0.95, Low: 0.6},
				},
				Consecutive: 5, OnlinePriority: 60, Cooldown: time.Hour,
				Limits: planner.Limits{InFlight: 8, PerNode: 2, PerJob: 3, PerHour: 60, PerRound: 2},
			},
		},
		Capacity: map[string]capacity.Policy{
			"batch": {Min: 2, Max: 20, Interval: time.Minute, ScaleInIdle: 5 * time.Minute,
				Target: capacity.Target{Eligibility: &struct{}{}}},
			"gpu": {Min: 0, Max: 4, Interval: 45 * time.Second, ScaleInIdle: 10 * time.Minute,
				Target: capacity.Target{Command: &capacity.Command{
					ScaleOut:     []string{"/usr/local/bin/add-nodes", "gpu"},
					ScaleIn:      []string{"/usr/local/bin/remove-node"},
					StartTimeout: 15 * time.Minute,
				}}},
		},
	}
	allEnv := map[string]string{
		EnvAdvertise: "10.0.0.3:4900",
		EnvNomad:     "http://10.0.0.3:4646",
		EnvConsul:    "10.0.0.3:8500",
	}

	cases := []struct {
		name string
		file string // none if empty
		args []string
		env  map[string]string
		want func(c *Config)
	}{
		{
			name: "file overrides defaults",
			file: everything,
			want: func(c *Config) { *c = fromFile },
		},
		{
			name: "file changes only what it writes",
			file: `
node_id = "n"
sample { source = "host" }
rebalance {
  threshold "memory" { low = 0.5 }
  limits { per_hour = 10 }
}
`,
			args: []string{"-advertise", "10.0.0.1:4700"},
			want: func(c *Config) {
				*c = Default()
				c.Advertise, c.NodeID = "10.0.0.1:4700", "n"
				c.Sample.Source = load.SourceHost
				c.Rebalance.Policy.Thresholds.Memory.Low = 0.5
				c.Rebalance.Policy.Limits.PerHour = 10
			},
		},
		{
			name: "environment overrides file",
			file: everything,
			env:  allEnv,
			want: func(c *Config) {
				*c = fromFile
				c.Advertise = "10.0.0.3:4900"
				c.Nomad.Address, c.Consul.Address = "http://10.0.0.3:4646", "10.0.0.3:8500"
			},
		},
		{
			name: "environment overrides defaults",
			args: []string{"-node-id", "n"},
			env:  allEnv,
			want: func(c *Config) {
				*c = Default()
				c.NodeID = "n"
				c.Advertise = "10.0.0.3:4900"
				c.Nomad.Address, c.Consul.Address = "http://10.0.0.3:4646", "10.0.0.3:8500"
			},
		},
		{
			name: "empty environment variables are not set",
			file: everything,
			env:  map[string]string{EnvAdvertise: "", EnvNomad: "", EnvConsul: ""},
			want: func(c *Config) { *c = fromFile },
		},
		{
			name: "flags given override environment and file",
			file: everything,
			env:  allEnv,
			args: []string{
				"-listen", ":5000", "-advertise", "10.0.0.4:5000",
				"-node-id", "flag-node", "-node-name", "flag-name",
				"-nomad", "http://127.0.0.1:5646", "-consul", "127.0.0.1:5500",
				"-sample-interval", "10s", "-sample-window", "2m", "-sample-source", "allocations",
				"-rebalance=true", "-dry-run=false", "-rebalance-interval", "45s",
			},
			want: func(c *Config) {
				*c = fromFile
				c.Listen, c.Advertise = ":5000", "10.0.0.4:5000"
				c.NodeID, c.NodeName = "flag-node", "flag-name"
				c.Nomad.Address, c.Consul.Address = "http://127.0.0.1:5646", "127.0.0.1:5500"
				c.Sample.Interval, c.Sample.Window, c.Sample.Source = 10*time.Second, 2*time.Minute, load.SourceAllocations
				c.Rebalance.Enabled, c.Rebalance.DryRun, c.Rebalance.Interval = true, false, 45*time.Second
			},
		},
		{
			name: "flags not given leave the file's values",
			file: everything,
			args: []string{"-node-name", "flag-name", "-dry-run=false"},
			want: func(c *Config) {
				*c = fromFile
				c.NodeName = "flag-name"
				c.Rebalance.DryRun = false
			},
		},
		{
			name: "empty file",
			file: "# nothing set\n",
			args: required,
			want: func(c *Config) { *c = withRequired() },
		},
		{
			name: "-rebalance=false and -dry-run",
			args: append([]string{"-rebalance=false", "-dry-run"}, required...),
			want: func(c *Config) {
				*c = withRequired()
				c.Rebalance.Enabled, c.Rebalance.DryRun = false, true
			},
		},
		{
			name: "-config may come last",
			file: `node_id = "file-node"`,
			args: []string{"-advertise", "10.0.0.1:4700"},
			want: func(c *Config) {
				*c = Default()
				c.Advertise, c.NodeID = "10.0.0.1:4700", "file-node"
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args, file := tc.args, ""
			if tc.file != "" {
				file = writeFile(t, tc.file)
				args = append([]string{"-config", file}, args...)
			}
			got, err := Load(args, env(tc.env))
			must.NoError(t, err)
			var want Config
			tc.want(&want)
			want.File = file
			must.Eq(t, want, *got)
		})
	}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		name string
		file string
		args []string
		env  map[string]string
		want []string // each a part of one error
	}{
		{name: "listen empty", args: []string{"-listen", ""},
			want: []string{`listen (-listen): required`}},
		{name: "listen not host:port", file: `listen = "4700"`,
			want: []string{`listen (-listen): "4700" is not host:port`}},
		{name: "listen bad port", file: `listen = ":http"`,
			want: []string{`listen (-listen): ":http" has port "http", not a number from 0 to 65535`}},
		{name: "advertise required", args: []string{"-advertise", ""},
			want: []string{`advertise (-advertise, NOMAD_ADDR_http): required`}},
		{name: "advertise lacks host", args: []string{"-advertise", ":4700"},
			want: []string{`advertise (-advertise, NOMAD_ADDR_http): ":4700" lacks the host`}},
		{name: "advertise not host:port", args: []string{"-advertise", "10.0.0.1"},
			want: []string{`advertise (-advertise, NOMAD_ADDR_http): "10.0.0.1" is not host:port`}},
		{name: "node_id required", args: []string{"-node-id", ""},
			want: []string{`node_id (-node-id): required`}},
		{name: "nomad address required", file: `nomad { address = "" }`,
			want: []string{`nomad.address (-nomad, NOMAD_ADDR): required`}},
		{name: "nomad address not http", env: map[string]string{EnvNomad: "127.0.0.1:4646"},
			want: []string{`nomad.address (-nomad, NOMAD_ADDR): "127.0.0.1:4646" must be an http:// or https:// URL`}},
		{name: "nomad address lacks host", args: []string{"-nomad", "http:///v1"},
			want: []string{`nomad.address (-nomad, NOMAD_ADDR): "http:///v1" lacks the host`}},
		{name: "consul address required", args: []string{"-consul", ""},
			want: []string{`consul.address (-consul, CONSUL_HTTP_ADDR): required`}},
		{name: "consul address bad", file: `consul { address = "consul" }`,
			want: []string{`consul.address (-consul, CONSUL_HTTP_ADDR): "consul" is not host:port, or an http:// or https:// URL`}},
		{name: "consul address bad scheme", env: map[string]string{EnvConsul: "tcp://127.0.0.1:8500"},
			want: []string{`consul.address (-consul, CONSUL_HTTP_ADDR): "tcp://127.0.0.1:8500" must be an http:// or https:// URL`}},
		{name: "sample interval zero", file: `sample { interval = "0s" }`,
			want: []string{`sample.interval (-sample-interval): "0s" must be at least 1s`}},
		{name: "sample interval negative", args: []string{"-sample-interval", "-5s"},
			want: []string{`sample.interval (-sample-interval): "-5s" must be at least 1s`}},
		{name: "sample interval too short", file: `sample { interval = "100ms" }`,
			want: []string{`sample.interval (-sample-interval): "100ms" must be at least 1s`}},
		{name: "state key among the migrations", file: `rebalance { state_key = "ferry/migrations/state" }`,
			want: []string{`rebalance.state_key: "ferry/migrations/state" must not overlap "ferry/migrations/"`}},
		{name: "lock among the drivers' endpoints", file: `rebalance { lock_key = "ferry/drivers/leader" }`,
			want: []string{`rebalance.lock_key: "ferry/drivers/leader" must not overlap "ferry/drivers/"`}},
		{name: "node records over the checkpoints", file: `sample { prefix = "ferry" }`,
			want: []string{`sample.prefix: "ferry/" must not overlap "ferry/checkpoints/"`}},
		{name: "sample window below interval", file: `sample { window = "3s" }`,
			want: []string{`sample.window (-sample-window): "3s" must be at least sample.interval ("5s")`}},
		{name: "sample source", args: []string{"-sample-source", "cgroups"},
			want: []string{`sample.source (-sample-source): "cgroups" must be "allocations" (the allocations' own usage) or "host"`}},
		{name: "sample heartbeat below the interval", file: "sample {\n  heartbeat = \"6s\"\n  interval = \"10s\"\n  window = \"30s\"\n}",
			want: []string{`sample.heartbeat (-sample-heartbeat): 6s must be at least the sample interval 10s`}},
		{name: "sample dead band whole", file: `sample { dead_band = 1 }`,
			want: []string{`sample.dead_band: 1 must be a fraction of the node's capacity, at least 0 and below 1`}},
		{name: "sample prefix required", file: `sample { prefix = "" }`,
			want: []string{`sample.prefix: required`}},
		{name: "sample prefix leading slash", file: `sample { prefix = "/ferry/nodes/" }`,
			want: []string{`sample.prefix: "/ferry/nodes/" must not start with "/"`}},
		{name: "key under prefix without slash", file: "sample { prefix = \"ferry/nodes\" }\nrebalance { state_key = \"ferry/nodes/state\" }\n",
			want: []string{`rebalance.state_key: "ferry/nodes/state" must not be under sample.prefix ("ferry/nodes")`}},
		{name: "rebalance interval", args: []string{"-rebalance-interval", "0s"},
			want: []string{`rebalance.interval (-rebalance-interval): "0s" must be at least 1s`}},
		{name: "move timeout", file: `rebalance { move_timeout = "-1m" }`,
			want: []string{`rebalance.move_timeout: "-1m0s" must be positive`}},
		{name: "lock key required", file: `rebalance { lock_key = "" }`,
			want: []string{`rebalance.lock_key: required`}},
		{name: "state key leading slash", file: `rebalance { state_key = "/ferry/state" }`,
			want: []string{`rebalance.state_key: "/ferry/state" must not start with "/"`}},
		{name: "keys equal", file: `rebalance { state_key = "ferry/leader" }`,
			want: []string{`rebalance.state_key: "ferry/leader" must differ from rebalance.lock_key`}},
		{name: "key under prefix", file: `rebalance { lock_key = "ferry/nodes/leader" }`,
			want: []string{`rebalance.lock_key: "ferry/nodes/leader" must not be under sample.prefix ("ferry/nodes/")`}},
		{name: "threshold high", file: "rebalance {\n  threshold \"cpu\" { high = 1.5 }\n}\n",
			want: []string{`rebalance.threshold "cpu".high: 1.5 must be a fraction of capacity in (0, 1]`}},
		{name: "threshold high below low", file: "rebalance {\n  threshold \"memory\" { high = 0.5 }\n}\n",
			want: []string{`rebalance.threshold "memory".high: 0.5 must be above rebalance.threshold "memory".low (0.7)`}},
		{name: "threshold low", file: "rebalance {\n  threshold \"memory\" { low = 0 }\n}\n",
			want: []string{`rebalance.threshold "memory".low: 0 must be a fraction of capacity in (0, 1)`}},
		{name: "consecutive", file: `rebalance { consecutive = 0 }`,
			want: []string{`rebalance.consecutive: 0 must be at least 1`}},
		{name: "online priority", file: `rebalance { online_priority = 101 }`,
			want: []string{`rebalance.online_priority: 101 must be a Nomad job priority between 1 and 100`}},
		{name: "cooldown", file: `rebalance { cooldown = "-1s" }`,
			want: []string{`rebalance.cooldown: -1s must not be negative`}},
		{name: "limits", file: "rebalance {\n  limits { per_node = 0 }\n}\n",
			want: []string{`rebalance.limits.per_node: 0 must be at least 1`}},
		{name: "capacity min negative", file: `capacity "default" { min = -1 }`,
			want: []string{`capacity "default".min: -1 must not be negative`}},
		{name: "capacity max zero", file: `capacity "default" { max = 0 }`,
			want: []string{`capacity "default".max: 0 must be at least 1 (the most nodes in service)`}},
		{name: "capacity min above max", file: "capacity \"default\" {\n  min = 5\n  max = 3\n}\n",
			want: []string{`capacity "default".min: 5 must not exceed max (3)`}},
		{name: "capacity min above default max", file: `capacity "default" { min = 11 }`,
			want: []string{`capacity "default".min: 11 must not exceed max (10)`}},
		{name: "capacity interval too short", file: `capacity "default" { interval = "500ms" }`,
			want: []string{`capacity "default".interval: 500ms must be at least 1s`}},
		{name: "capacity scale_in_idle negative", file: `capacity "default" { scale_in_idle = "-1m" }`,
			want: []string{`capacity "default".scale_in_idle: -1m0s must not be negative`}},
		{
			name: "capacity both targets",
			file: `
capacity "default" {
  target "eligibility" {}
  target "command" {
    scale_out = ["/usr/local/bin/add-nodes"]
    scale_in  = ["/usr/local/bin/remove-node"]
  }
}
`,
			want: []string{`capacity "default".target: give one target: "eligibility" or "command"`},
		},
		{
			name: "capacity command without scale_out",
			file: "capacity \"gpu\" {\n  target \"command\" {\n    scale_in = [\"/usr/local/bin/remove-node\"]\n  }\n}\n",
			want: []string{`capacity "gpu".target "command".scale_out: required: the command that creates machines`},
		},
		{
			name: "capacity command empty",
			file: "capacity \"gpu\" {\n  target \"command\" {\n    scale_out = [\"\"]\n    start_timeout = \"-1s\"\n  }\n}\n",
			want: []string{
				`capacity "gpu".target "command".scale_out: required`,
				`capacity "gpu".target "command".scale_in: required: the command that destroys a machine`,
				`capacity "gpu".target "command".start_timeout: -1s must not be negative`,
			},
		},
		{name: "capacity pool name with a space", file: `capacity "gpu pool" {}`,
			want: []string{`capacity "gpu pool": the label is not a Nomad node pool name, which is 1 to 128 letters, digits, "-" and "_": it has " "`}},
		{name: "capacity pool name with a dot", file: `capacity "gpu.large" {}`,
			want: []string{`capacity "gpu.large": the label is not a Nomad node pool name, … it has "."`}},
		{name: "capacity pool name empty", file: `capacity "" {}`,
			want: []string{`capacity "": the label is not a Nomad node pool name, … it is empty`}},
		{name: "capacity pool name too long", file: `capacity "` + strings.Repeat("a", 129) + `" {}`,
			want: []string{`capacity "aaaa…": the label is not a Nomad node pool name, … it has 129 characters`}},
		{
			name: "capacity problems of every pool, in the order of their names",
			file: `
capacity "gpu" { max = 0 }
capacity "batch_2" { interval = "0s" }
capacity "default" {}
`,
			want: []string{
				`capacity "batch_2".interval: 0s must be at least 1s`,
				`capacity "gpu".max: 0 must be at least 1`,
			},
		},
		{
			name: "all problems at once",
			file: `
listen = "nowhere"
sample { source = "guess" }
rebalance {
  interval = "0s"
  limits {
    in_flight = 0
    per_round = 0
  }
}
`,
			args: []string{"-node-id", ""},
			want: []string{
				`listen (-listen): "nowhere" is not host:port`,
				`node_id (-node-id): required`,
				`sample.source (-sample-source): "guess" must be`,
				`rebalance.interval (-rebalance-interval): "0s" must be at least 1s`,
				`rebalance.limits.in_flight: 0 must be at least 1`,
				`rebalance.limits.per_round: 0 must be at least 1`,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assertErrors(t, tc.file, tc.args, tc.env, tc.want)
		})
	}
}

// TestFileErrors covers what is wrong in the file itself: each error says
// where.
func TestFileErrors(t *testing.T) {
	cases := []struct {
		name string
		file string
		want []string
	}{
		{
			name: "syntax error",
			file: "node_id = \"n\"\nnode_name = \"m\"\nsample {\n  interval = \n}\n",
			want: []string{`companion.hcl:4,…: Invalid expression`},
		},
		{
			name: "unclosed block",
			file: "node_id = \"n\"\nrebalance {\n  enabled = true\n",
			want: []string{`companion.hcl:2,…: Unclosed configuration block`},
		},
		{
			name: "unknown attribute",
			file: "node_id = \"n\"\nnode_name = \"m\"\nlisten_addr = \":4700\"\n",
			want: []string{`companion.hcl:3,1: Unsupported argument; An argument named "listen_addr" is not expected here.`},
		},
		{
			// The driver serves its own checkpoints now.
			name: "attributes of the checkpoint server that was",
			file: "token = \"t\"\ncheckpoint_dir = \"/var/lib/ferry/checkpoints\"\n",
			want: []string{
				`companion.hcl:1,1: Unsupported argument; An argument named "token" is not expected here.`,
				`companion.hcl:2,1: Unsupported argument; An argument named "checkpoint_dir" is not expected here.`,
			},
		},
		{
			name: "unknown attribute in a block",
			file: "rebalance {\n  limits {\n    per_minute = 3\n  }\n}\n",
			want: []string{`companion.hcl:3,5: Unsupported argument; An argument named "per_minute" is not expected here.`},
		},
		{
			name: "unknown block",
			file: "vault {\n  address = \"x\"\n}\n",
			want: []string{`companion.hcl:1,1: Unsupported block type; Blocks of type "vault" are not expected here.`},
		},
		{
			name: "unknown threshold label",
			file: "rebalance {\n  threshold \"cpu\" { high = 0.9 }\n  threshold \"disk\" {\n    high = 0.9\n  }\n}\n",
			want: []string{`companion.hcl:3,13: rebalance.threshold "disk": unknown resource; thresholds are "cpu" and "memory"`},
		},
		{
			name: "threshold without label",
			file: "rebalance {\n  threshold {\n    high = 0.9\n  }\n}\n",
			want: []string{`companion.hcl:2,13: Missing resource for threshold; All threshold blocks must have 1 labels (resource).`},
		},
		{
			name: "threshold twice",
			file: "rebalance {\n  threshold \"cpu\" { high = 0.9 }\n  threshold \"cpu\" { high = 0.95 }\n}\n",
			want: []string{`companion.hcl:3,13: rebalance.threshold "cpu": written twice; the first is at …companion.hcl:2,13`},
		},
		{
			name: "block twice",
			file: "sample {}\nsample {}\n",
			want: []string{`companion.hcl:2,1: Duplicate sample block`},
		},
		{
			name: "bad duration",
			file: "sample {\n  interval = \"5 seconds\"\n  window = 30\n}\n",
			want: []string{
				`companion.hcl:2,14: sample.interval: "5 seconds" is not a duration, e.g. "30s" or "10m"`,
				`companion.hcl:3,12: sample.window: "30" is not a duration`,
			},
		},
		{
			name: "wrong type",
			file: "rebalance {\n  consecutive = \"three\"\n  enabled = \"maybe\"\n}\n",
			want: []string{`companion.hcl:2,18: Unsuitable value type; Unsuitable value: a number is required`, `companion.hcl:3,14: Unsuitable value type; Unsuitable value: a bool is required`},
		},
		{
			name: "unknown attribute in a capacity block",
			file: "capacity \"default\" {\n  max = 3\n  maximum = 4\n}\n",
			want: []string{`companion.hcl:3,3: Unsupported argument; An argument named "maximum" is not expected here.`},
		},
		{
			name: "unknown attribute in a target",
			file: "capacity \"default\" {\n  target \"eligibility\" {\n    scale_out = [\"x\"]\n  }\n}\n",
			want: []string{`companion.hcl:3,5: Unsupported argument; An argument named "scale_out" is not expected here.`},
		},
		{
			name: "unknown target kind",
			file: "capacity \"default\" {\n  target \"ec2\" {}\n}\n",
			want: []string{`companion.hcl:2,10: capacity "default".target "ec2": unknown kind; targets are "eligibility" and "command"`},
		},
		{
			name: "capacity without a pool",
			file: "capacity {\n  max = 3\n}\n",
			want: []string{`companion.hcl:1,10: Missing pool for capacity; All capacity blocks must have 1 labels (pool).`},
		},
		{
			name: "capacity pool twice",
			file: "capacity \"gpu\" { max = 4 }\ncapacity \"default\" {}\ncapacity \"gpu\" { max = 8 }\n",
			want: []string{`companion.hcl:3,10: capacity "gpu": written twice; the first is at …companion.hcl:1,10`},
		},
		{
			name: "target twice",
			file: "capacity \"default\" {\n  target \"eligibility\" {}\n  target \"eligibility\" {}\n}\n",
			want: []string{`companion.hcl:3,10: capacity "default".target "eligibility": written twice; the first is at …companion.hcl:2,10`},
		},
		{
			name: "variables",
			file: "node_id = node.unique.id\n",
			want: []string{`companion.hcl:1,11: Variables not allowed; Variables may not be used here.`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assertErrors(t, tc.file, nil, nil, tc.want)
		})
	}
}

// TestCapacity checks how capacity blocks decode: each from the default
// policy, a target written replacing the default one.
func TestCapacity(t *testing.T) {
	command := func(p capacity.Policy, c capacity.Command) capacity.Policy {
		p.Target = capacity.Target{Command: &c}
		return p
	}
	withMax := func(p capacity.Policy, max int) capacity.Policy {
		p.Max = max
		return p
	}
	def := capacity.DefaultPolicy()
	cases := []struct {
		name string
		file string
		want map[string]capacity.Policy
	}{
		{name: "none", file: "# no pool sized\n", want: nil},
		{name: "empty block", file: `capacity "default" {}`,
			want: map[string]capacity.Policy{"default": def}},
		{name: "only max", file: `capacity "default" { max = 3 }`,
			want: map[string]capacity.Policy{"default": withMax(def, 3)}},
		{name: "eligibility written", file: "capacity \"default\" {\n  target \"eligibility\" {}\n}\n",
			want: map[string]capacity.Policy{"default": def}},
		{
			name: "command replaces eligibility",
			file: "capacity \"gpu\" {\n  target \"command\" {\n    scale_out = [\"up\", \"gpu\"]\n    scale_in = [\"down\"]\n  }\n}\n",
			want: map[string]capacity.Policy{"gpu": command(def, capacity.Command{
				ScaleOut: []string{"up", "gpu"}, ScaleIn: []string{"down"}, StartTimeout: capacity.DefaultStartTimeout,
			})},
		},
		{
			name: "pools apart",
			file: "capacity \"a\" { max = 2 }\ncapacity \"b\" { max = 3 }\ncapacity \"c\" {}\n",
			want: map[string]capacity.Policy{"a": withMax(def, 2), "b": withMax(def, 3), "c": def},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Load(append([]string{"-config", writeFile(t, tc.file)}, required...), env(nil))
			must.NoError(t, err)
			must.Eq(t, tc.want, got.Capacity)
		})
	}
}

func TestArgs(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
		is   error
	}{
		{name: "positional", args: []string{"-node-id", "n", "extra"},
			want: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"-lsiten", ":1"},
			want: "flag provided but not defined: -lsiten"},
		{name: "no -token", args: []string{"-token", "t"},
			want: "flag provided but not defined: -token"},
		{name: "no -checkpoint-dir", args: []string{"-checkpoint-dir", "/var/lib/ferry/checkpoints"},
			want: "flag provided but not defined: -checkpoint-dir"},
		{name: "bad duration flag", args: []string{"-sample-window", "soon"},
			want: `invalid value "soon" for flag -sample-window`},
		{name: "missing file", args: []string{"-config", "/nonexistent/companion.hcl"},
			want: "-config: open /nonexistent/companion.hcl:", is: os.ErrNotExist},
		{name: "help", args: []string{"-h"}, want: "help requested", is: flag.ErrHelp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			quietStderr(t)
			_, err := Load(tc.args, env(nil))
			must.ErrorContains(t, err, tc.want)
			if tc.is != nil {
				must.ErrorIs(t, err, tc.is)
			}
		})
	}
}

// assertErrors loads a configuration valid but for file, args and env, and
// checks that there is one error for each of want, and that each of want
// matches exactly one error.
func assertErrors(t *testing.T, file string, args []string, kv map[string]string, want []string) {
	t.Helper()
	base := append(append([]string{}, required...), args...)
	if file != "" {
		base = append([]string{"-config", writeFile(t, file)}, base...)
	}
	got, err := Load(base, env(kv))
	must.Nil(t, got)
	must.Error(t, err)
	errs := unjoin(err)
	for _, w := range want {
		n := 0
		for _, e := range errs {
			if matches(e.Error(), w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("want one error containing\n\t%s\ngot %d in\n\t%v", w, n, err)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("want %d errors, got %d:\n%v", len(want), len(errs), err)
	}
}

// matches says whether msg holds w, in which "…" stands for any text.
func matches(msg, w string) bool {
	for _, part := range strings.Split(w, "…") {
		i := strings.Index(msg, part)
		if i < 0 {
			return false
		}
		msg = msg[i+len(part):]
	}
	return true
}

// quietStderr discards what the flag package prints on a bad flag.
func quietStderr(t *testing.T) {
	t.Helper()
	r, w, err := os.Pipe()
	must.NoError(t, err)
	old := os.Stderr
	os.Stderr = w
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, r); close(done) }()
	t.Cleanup(func() {
		os.Stderr = old
		_ = w.Close()
		<-done
		_ = r.Close()
	})
}

func TestPolicyErrorUnwraps(t *testing.T) {
	c := withRequired()
	c.Rebalance.Policy.Consecutive = 0
	err := c.Validate()
	var fe *field.Error
	must.True(t, errors.As(err, &fe))
	must.Eq(t, "rebalance.consecutive: 0 must be at least 1 (rounds over the high threshold before a node is hot)", fe.Error())
}

// TestTokens checks where the ACL tokens come from: a token given anywhere
// wins over a token_file, which is read only without one.
func TestTokens(t *testing.T) {
	dir := t.TempDir()
	nomadFile, consulFile := filepath.Join(dir, "nomad.token"), filepath.Join(dir, "consul.token")
	must.NoError(t, os.WriteFile(nomadFile, []byte("nomad-from-file\n"), 0o600))
	must.NoError(t, os.WriteFile(consulFile, []byte("consul-from-file\n"), 0o600))
	file := writeFile(t, fmt.Sprintf("nomad {\n  token_file = %q\n}\nconsul {\n  token_file = %q\n}\n", nomadFile, consulFile))

	cfg, err := LoadTool("status", []string{"-config", file}, env(nil))
	must.NoError(t, err)
	must.Eq(t, "nomad-from-file", cfg.Nomad.Token)
	must.Eq(t, "consul-from-file", cfg.Consul.Token)

	cfg, err = LoadTool("status", []string{"-config", file, "-nomad-token", "nomad-flag"},
		env(map[string]string{EnvConsulToken: "consul-env"}))
	must.NoError(t, err)
	must.Eq(t, "nomad-flag", cfg.Nomad.Token)
	must.Eq(t, "consul-env", cfg.Consul.Token)

	cfg, err = LoadTool("status", nil, env(map[string]string{EnvConsulTokenFile: consulFile, EnvNomadToken: "nomad-env"}))
	must.NoError(t, err)
	must.Eq(t, "nomad-env", cfg.Nomad.Token)
	must.Eq(t, "consul-from-file", cfg.Consul.Token)

	empty := filepath.Join(dir, "empty")
	must.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	_, err = LoadTool("status", []string{"-nomad-token-file", filepath.Join(dir, "missing"), "-consul-token-file", empty}, env(nil))
	must.ErrorContains(t, err, "nomad.token_file (-nomad-token-file): open "+filepath.Join(dir, "missing"))
	must.ErrorContains(t, err, "the file holding the nomad ACL token")
	must.ErrorContains(t, err, fmt.Sprintf("consul.token_file (-consul-token-file, CONSUL_HTTP_TOKEN_FILE): %q is empty", empty))

	_, err = LoadTool("status", []string{"-nomad-token", "a b"}, env(nil))
	must.ErrorContains(t, err, "nomad.token (-nomad-token, NOMAD_TOKEN): has blanks inside")
	must.StrNotContains(t, err.Error(), "a b")

	must.Eq(t, "consul.token (-consul-token, CONSUL_HTTP_TOKEN)", Setting("consul.token"))
}

// TestLoadCommand checks a command's own flags and arguments beside the
// configuration's, in any order.
func TestLoadCommand(t *testing.T) {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	node := fs.String("node", "", "")
	cfg, rest, err := LoadCommand(fs, []string{"-nomad-token", "t", "alloc-1", "-node", "n2"}, env(nil))
	must.NoError(t, err)
	must.Eq(t, []string{"alloc-1"}, rest)
	must.Eq(t, "n2", *node)
	must.Eq(t, "t", cfg.Nomad.Token)
}

func TestLoadTool(t *testing.T) {
	noEnv := func(string) string { return "" }
	// The agent needs its node's fields; plan and status do not.
	_, err := Load(nil, noEnv)
	if err == nil || !strings.Contains(err.Error(), "node_id (-node-id): required") {
		t.Fatalf("agent without a node ID: %v", err)
	}
	cfg, err := LoadTool("plan", []string{"-consul", "127.0.0.1:9500"}, noEnv)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if cfg.Consul.Address != "127.0.0.1:9500" {
		t.Fatalf("consul %s", cfg.Consul.Address)
	}
	// Only the flags the operator commands use are defined.
	if _, err := LoadTool("plan", []string{"-dry-run"}, noEnv); err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -dry-run") {
		t.Fatalf("plan -dry-run: %v", err)
	}
	// The policy is still checked.
	dir := t.TempDir()
	path := filepath.Join(dir, "c.hcl")
	if err := os.WriteFile(path, []byte("rebalance {\n  consecutive = 0\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadTool("plan", []string{"-config", path}, noEnv)
	if err == nil || !strings.Contains(err.Error(), "rebalance.consecutive") {
		t.Fatalf("plan with a bad policy: %v", err)
	}
	if _, err := LoadTool("status", []string{"extra"}, noEnv); err == nil || !strings.Contains(err.Error(), "status takes only flags") {
		t.Fatalf("status with an argument: %v", err)
	}
}
