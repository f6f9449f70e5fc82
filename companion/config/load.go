package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// Environment variables that override the file.
const (
	EnvAdvertise = "NOMAD_ADDR_http" // the system job's port labelled "http"
	EnvNomad     = "NOMAD_ADDR"
	EnvConsul    = "CONSUL_HTTP_ADDR"
	// The ACL tokens, named as Nomad's and Consul's CLIs name them.
	EnvNomadToken      = "NOMAD_TOKEN"
	EnvConsulToken     = "CONSUL_HTTP_TOKEN"
	EnvConsulTokenFile = "CONSUL_HTTP_TOKEN_FILE"
)

// An override is a field of the file that a flag, the environment, or both
// set too.
type override struct {
	field field.Path // as the file names it
	flag  string
	env   string
	tool  bool   // the operator commands (plan, status, migrate) have the flag too
	usage string // the flag's; the field's name and env follow it
}

// overrides are every flag and environment variable, with the field each
// sets.
var overrides = []override{
	{field: "listen", flag: "listen", usage: "`host:port` to serve /metrics and /v1/status on; they answer without a token"},
	{field: "advertise", flag: "advertise", env: EnvAdvertise, usage: "`host:port` other nodes reach this agent at"},
	{field: "node_id", flag: "node-id", usage: "this Nomad node's `ID`"},
	{field: "node_name", flag: "node-name", usage: "this Nomad node's `name`"},
	{field: "nomad.address", flag: "nomad", env: EnvNomad, tool: true, usage: "Nomad `URL`"},
	{field: "nomad.token", flag: "nomad-token", env: EnvNomadToken, tool: true, usage: "Nomad ACL `token` (secret ID; a flag shows in ps, prefer the file or the environment)"},
	{field: "nomad.token_file", flag: "nomad-token-file", tool: true, usage: "`file` holding the Nomad ACL token, read when no token is given"},
	{field: "consul.address", flag: "consul", env: EnvConsul, tool: true, usage: "Consul `address`"},
	{field: "consul.token", flag: "consul-token", env: EnvConsulToken, tool: true, usage: "Consul ACL `token` (secret ID; a flag shows in ps, prefer the file or the environment)"},
	{field: "consul.token_file", flag: "consul-token-file", env: EnvConsulTokenFile, tool: true, usage: "`file` holding the Consul ACL token, read when no token is given"},
	{field: "sample.interval", flag: "sample-interval", usage: "how often the node is sampled"},
	{field: "sample.window", flag: "sample-window", usage: "samples are averaged over this window"},
	{field: "sample.source", flag: "sample-source", usage: "what load is measured from, `source`: \"allocations\" or \"host\""},
	{field: "sample.heartbeat", flag: "sample-heartbeat", usage: "the node's record is written at least this often, and its session renewed"},
	{field: "rebalance.enabled", flag: "rebalance", usage: "move work off hot nodes; -rebalance=false turns it off"},
	{field: "rebalance.dry_run", flag: "dry-run", usage: "decide and log moves, never make them"},
	{field: "rebalance.interval", flag: "rebalance-interval", usage: "one planning round per interval"},
}

// overrideOf is the override of the field at p; none has no flag nor env.
func overrideOf(p field.Path) override {
	for _, o := range overrides {
		if o.field == p {
			return o
		}
	}
	return override{}
}

// has says whether the command, the agent's or an operator's, has o's flag.
func (o override) has(agent bool) bool {
	return o.flag != "" && (agent || o.tool)
}

// also names what sets the field besides the file, for errors about it:
// "-nomad, NOMAD_ADDR".
func (o override) also(agent bool) string {
	var names []string
	if o.has(agent) {
		names = append(names, "-"+o.flag)
	}
	if o.env != "" {
		names = append(names, o.env)
	}
	return strings.Join(names, ", ")
}

// Setting names the field at p as an error about it should, with what else
// sets it: "nomad.token (-nomad-token, NOMAD_TOKEN)".
func Setting(p field.Path) string {
	if also := overrideOf(p).also(true); also != "" {
		return fmt.Sprintf("%s (%s)", p, also)
	}
	return string(p)
}

// Load builds the configuration from args (the agent command's arguments),
// the file that -config names in them, and the environment as getenv
// (os.Getenv if nil) reads it: defaults, then the file, then the
// environment, then the flags given. It returns every problem at once.
// With -h or -help, it prints the flags and returns flag.ErrHelp.
func Load(args []string, getenv func(string) string) (*Config, error) {
	cfg, _, err := parse(flag.NewFlagSet("agent", flag.ContinueOnError), false, args, getenv)
	return cfg, err
}

// LoadTool is Load for the operator commands (plan, status): the same file,
// environment and flags, without the fields only an agent needs.
func LoadTool(command string, args []string, getenv func(string) string) (*Config, error) {
	cfg, _, err := parse(flag.NewFlagSet(command, flag.ContinueOnError), false, args, getenv)
	return cfg, err
}

// LoadCommand is LoadTool for an operator command with flags and arguments
// of its own (migrate ALLOC -node NODE): fs holds the command's flags, to
// which the configuration's are added; the arguments, which may come
// before, between or after the flags, are returned.
func LoadCommand(fs *flag.FlagSet, args []string, getenv func(string) string) (*Config, []string, error) {
	return parse(fs, true, args, getenv)
}

// parse builds the configuration of the command whose flags are fs (the
// agent's if fs is named "agent"); the arguments that are not flags are
// returned, and refused unless takesArgs.
func parse(fs *flag.FlagSet, takesArgs bool, args []string, getenv func(string) string) (*Config, []string, error) {
	agent := fs.Name() == "agent"
	if getenv == nil {
		getenv = os.Getenv
	}
	// The flags parse into the defaults, which -h shows; those given are
	// copied over the file and the environment.
	path := fs.String("config", "", "HCL configuration `file`; the environment and these flags override it")
	given := Default()
	flagged := given.fields()
	byFlag := map[string]field.Path{}
	for _, o := range overrides {
		if o.has(agent) {
			usage := fmt.Sprintf("%s (%s)", o.usage, o.field)
			if o.env != "" {
				usage = fmt.Sprintf("%s (%s; $%s overrides the file)", o.usage, o.field, o.env)
			}
			bind(fs, o.flag, flagged[o.field], usage)
			byFlag[o.flag] = o.field
		}
	}
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		if args = fs.Args(); len(args) == 0 {
			break
		}
		if !takesArgs {
			return nil, nil, fmt.Errorf("unexpected argument %q: %s takes only flags (the file is -config FILE)", args[0], fs.Name())
		}
		rest, args = append(rest, args[0]), args[1:]
	}

	cfg := Default()
	cfg.File = *path
	var errs []error
	if *path != "" {
		var fatal bool
		errs, fatal = loadFile(*path, &cfg)
		if fatal {
			return nil, nil, errors.Join(errs...)
		}
	}
	fields := cfg.fields()
	for _, o := range overrides {
		if o.env == "" {
			continue
		}
		if v := getenv(o.env); v != "" {
			fields[o.field].SetString(v)
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if p, ok := byFlag[f.Name]; ok {
			fields[p].Set(flagged[p])
		}
	})

	errs = append(errs, annotate(cfg.readTokenFiles(), agent)...)
	errs = append(errs, cfg.validate(agent)...)
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return &cfg, rest, nil
}

// bind defines the flag name to set v, a string, bool or duration field,
// with its value as the default.
func bind(fs *flag.FlagSet, name string, v reflect.Value, usage string) {
	switch p := v.Addr().Interface().(type) {
	case *string:
		fs.StringVar(p, name, *p, usage)
	case *bool:
		fs.BoolVar(p, name, *p, usage)
	case *time.Duration:
		fs.DurationVar(p, name, *p, usage)
	default:
		panic(fmt.Sprintf("config: flag -%s sets a %s", name, v.Type()))
	}
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
	return diagErrors(path, decode(file.Body, reflect.ValueOf(cfg).Elem(), "")), false
}
