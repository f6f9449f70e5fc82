// Package config is ferry-companion's configuration: one HCL file, named by
// -config, whose every field the environment and the command line may
// override. See example.hcl for a complete file with every default.
//
// Values are taken, each overriding the one before:
//
//  1. the defaults (Default),
//  2. the file named by -config, if any,
//  3. the environment: NOMAD_ADDR_http, NOMAD_ADDR, NOMAD_TOKEN,
//     CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE,
//  4. the flags given on the command line.
//
// With ACLs on, nomad.token and consul.token (or the files token_file
// names, read when no token is given) are the agent's and the operator
// commands' ACL tokens; jobspecs/acl/ has the policies they need.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
)

// Config is the companion's configuration. Its hcl tags are the file's
// schema: each field's name in the file, which Load decodes and Validate
// names in its errors; overrides (load.go) says which fields a flag or the
// environment sets too. Every attribute and block may be left out, keeping
// its default.
type Config struct {
	// Listen is the host:port to serve /metrics and /v1/status on. They
	// answer without a token, so by default only on the node itself; the
	// operator chooses a wider address (the system job: the node's).
	Listen    string `hcl:"listen,optional"`
	Advertise string `hcl:"advertise,optional"` // host:port other nodes reach this agent at
	NodeID    string `hcl:"node_id,optional"`   // this Nomad node's ID
	NodeName  string `hcl:"node_name,optional"` // this Nomad node's name

	Nomad     Nomad     `hcl:"nomad,block"`
	Consul    Consul    `hcl:"consul,block"`
	Sample    Sample    `hcl:"sample,block"`
	Rebalance Rebalance `hcl:"rebalance,block"`

	// Capacity sizes node pools, each by its Nomad node pool name:
	// capacity "gpu" { ... } is Capacity["gpu"], which starts from
	// capacity.DefaultPolicy(). A pool is sized only if it has a block;
	// there is none by default.
	Capacity map[string]capacity.Policy `hcl:"capacity,block" label:"pool"`

	// File is the configuration file that was read (-config), if any.
	File string
}

// Nomad is how the companion reaches the local Nomad agent.
type Nomad struct {
	Address string `hcl:"address,optional"` // an http:// or https:// URL
	// Token is the ACL token's secret ID, when Nomad's ACLs are on.
	Token string `hcl:"token,optional"`
	// TokenFile is a file holding the token, read when Token is empty.
	TokenFile string `hcl:"token_file,optional"`
}

// Consul is how the companion reaches the local Consul agent.
type Consul struct {
	Address string `hcl:"address,optional"` // host:port, or an http:// or https:// URL
	// Token is the ACL token's secret ID, when Consul's ACLs are on.
	Token string `hcl:"token,optional"`
	// TokenFile is a file holding the token, read when Token is empty.
	TokenFile string `hcl:"token_file,optional"`
}

// Sample is how the companion measures its node's load.
type Sample struct {
	Interval time.Duration `hcl:"interval,optional"` // how often the node is sampled
	Window   time.Duration `hcl:"window,optional"`   // samples are averaged over this window
	Source   string        `hcl:"source,optional"`   // load.SourceAllocations or load.SourceHost
	Prefix   string        `hcl:"prefix,optional"`   // Consul KV prefix of the node load records

	// When the record is written: at a change beyond the dead band, and
	// at least every heartbeat (load.Policy).
	Heartbeat time.Duration `hcl:"heartbeat,optional"`
	DeadBand  float64       `hcl:"dead_band,optional"`
}

// Publish is the load records' publishing policy.
func (s Sample) Publish() load.Policy {
	return load.Policy{Heartbeat: s.Heartbeat, DeadBand: s.DeadBand}
}

// Rebalance is the rebalancer: which node leads it, how often it plans, and
// its policy.
type Rebalance struct {
	Enabled     bool          `hcl:"enabled,optional"`
	DryRun      bool          `hcl:"dry_run,optional"`      // decide and log, never move
	Interval    time.Duration `hcl:"interval,optional"`     // one planning round per interval
	MoveTimeout time.Duration `hcl:"move_timeout,optional"` // how long one move may take before it counts as failed
	LockKey     string        `hcl:"lock_key,optional"`     // Consul KV key of the leader lock
	StateKey    string        `hcl:"state_key,optional"`    // Consul KV key of the planner's state

	// Policy is written flat in the rebalance block, named by its own tags:
	// online_priority, consecutive, cooldown, threshold "cpu" and "memory"
	// { high, low } and limits { in_flight, per_node, per_job, per_hour,
	// per_round }.
	Policy planner.Config `hcl:",remain"`
}

// Defaults of the fields no other package has one for; the keys are those
// driver/sdk names.
const (
	DefaultListen        = "127.0.0.1:4700"
	DefaultNomadAddress  = "http://127.0.0.1:4646"
	DefaultConsulAddress = "127.0.0.1:8500"
	DefaultLockKey       = sdk.KeyLeader
	DefaultStateKey      = sdk.KeyPlannerState
)

// Default is the configuration before any file, environment or flag. It
// lacks what only the node can say: advertise and node_id.
func Default() Config {
	return Config{
		Listen: DefaultListen,
		Nomad:  Nomad{Address: DefaultNomadAddress},
		Consul: Consul{Address: DefaultConsulAddress},
		Sample: Sample{
			Interval:  5 * time.Second,
			Window:    30 * time.Second,
			Source:    load.SourceAllocations,
			Prefix:    sdk.PrefixNodes,
			Heartbeat: load.DefaultHeartbeat,
			DeadBand:  load.DefaultDeadBand,
		},
		Rebalance: Rebalance{
			Enabled:     true,
			Interval:    30 * time.Second,
			MoveTimeout: 10 * time.Minute,
			LockKey:     DefaultLockKey,
			StateKey:    DefaultStateKey,
			Policy:      planner.DefaultConfig(),
		},
	}
}

// blockDefaults are what a block of these types starts from where the file
// writes one the configuration lacks: each capacity "<pool>" block from
// capacity.DefaultPolicy(), a target "command" block from the default
// start_timeout. A block of any other type starts from its zero value.
var blockDefaults = map[reflect.Type]func() any{
	reflect.TypeFor[capacity.Policy]():  func() any { return capacity.DefaultPolicy() },
	reflect.TypeFor[capacity.Command](): func() any { return capacity.Command{StartTimeout: capacity.DefaultStartTimeout} },
}

// Validate checks every field and returns all problems at once, each naming
// the field as it is written in the file, with its flag and environment
// variable where it has them.
func (c *Config) Validate() error {
	return errors.Join(c.validate(true)...)
}

// validate checks the fields; the agent's own (listen, advertise, node_id)
// only when agent is set, as the operator commands (plan, status) only read
// Consul and Nomad. Each error names what else sets its field: the flags
// of the command, and the environment.
func (c *Config) validate(agent bool) []error {
	var errs []error
	if agent {
		errs = append(errs, c.validateAgent()...)
	}
	errs = append(errs, c.Nomad.validate("nomad")...)
	errs = append(errs, c.Consul.validate("consul")...)
	errs = append(errs, c.Sample.validate("sample")...)
	errs = append(errs, c.Rebalance.validate("rebalance", c.Sample)...)
	errs = append(errs, validateCapacity("capacity", c.Capacity)...)
	return annotate(errs, agent)
}

// annotate names in each field error what else sets its field: the flags
// of the command, and the environment.
func annotate(errs []error, agent bool) []error {
	for _, err := range errs {
		var fe *field.Error
		if errors.As(err, &fe) {
			fe.Also = overrideOf(fe.Path).also(agent)
		}
	}
	return errs
}

// validateAgent checks the fields only an agent needs.
func (c *Config) validateAgent() []error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, field.Errorf("listen", `required: the host:port to serve /metrics and /v1/status on, e.g. %q`, DefaultListen))
	} else if err := checkHostPort(c.Listen, false); err != nil {
		errs = append(errs, field.Errorf("listen", `%q %v, e.g. %q`, c.Listen, err, DefaultListen))
	}
	if c.Advertise == "" {
		errs = append(errs, field.Errorf("advertise", "required: the host:port other nodes reach this agent at"))
	} else if err := checkHostPort(c.Advertise, true); err != nil {
		errs = append(errs, field.Errorf("advertise", `%q %v: the host:port other nodes reach this agent at, e.g. "10.0.0.5:4700"`, c.Advertise, err))
	}
	if c.NodeID == "" {
		errs = append(errs, field.Errorf("node_id", "required: this Nomad node's ID (${node.unique.id} in the jobspec)"))
	}
	return errs
}

func (n Nomad) validate(path field.Path) []error {
	errs := checkToken(path, n.Token)
	address := path.Child("address")
	if n.Address == "" {
		return append(errs, field.Errorf(address, "required, e.g. %q", DefaultNomadAddress))
	}
	if err := checkURL(n.Address); err != nil {
		return append(errs, field.Errorf(address, "%q %v, e.g. %q", n.Address, err, DefaultNomadAddress))
	}
	return errs
}

func (c Consul) validate(path field.Path) []error {
	errs := checkToken(path, c.Token)
	address := path.Child("address")
	if c.Address == "" {
		return append(errs, field.Errorf(address, "required, e.g. %q", DefaultConsulAddress))
	}
	var err error
	if strings.Contains(c.Address, "://") {
		err = checkURL(c.Address)
	} else if err = checkHostPort(c.Address, true); err != nil {
		err = fmt.Errorf("%v, or an http:// or https:// URL", err)
	}
	if err != nil {
		return append(errs, field.Errorf(address, "%q %v, e.g. %q", c.Address, err, DefaultConsulAddress))
	}
	return errs
}

// checkToken checks the token of the block at path (nomad or consul), as
// given or as read from its token_file: an HTTP header carries it, so it
// has no blanks. The token itself is never shown.
func checkToken(path field.Path, token string) []error {
	if strings.ContainsFunc(token, unicode.IsSpace) {
		return []error{field.Errorf(path.Child("token"), "has blanks inside: it is an ACL token's secret ID, e.g. from `nomad acl token create` or `consul acl token create`")}
	}
	return nil
}

// readTokenFiles reads the token of each of nomad and consul from its
// token_file when no token is given, so that a token set anywhere
// (file, environment, flag) wins over a token_file.
func (c *Config) readTokenFiles() []error {
	var errs []error
	for _, t := range []struct {
		path        field.Path
		token, file *string
	}{
		{"nomad", &c.Nomad.Token, &c.Nomad.TokenFile},
		{"consul", &c.Consul.Token, &c.Consul.TokenFile},
	} {
		if *t.token != "" || *t.file == "" {
			continue
		}
		at := t.path.Child("token_file")
		b, err := os.ReadFile(*t.file)
		if err != nil {
			errs = append(errs, field.Errorf(at, "%v: the file holding the %s ACL token", err, t.path))
			continue
		}
		if *t.token = strings.TrimSpace(string(b)); *t.token == "" {
			errs = append(errs, field.Errorf(at, "%q is empty: it must hold the %s ACL token", *t.file, t.path))
		}
	}
	return errs
}

func (s Sample) validate(path field.Path) []error {
	var errs []error
	add := func(name, format string, args ...any) {
		errs = append(errs, field.Errorf(path.Child(name), format, args...))
	}
	if s.Interval < minInterval {
		add("interval", `%q must be at least %s, e.g. "5s"`, s.Interval, minInterval)
	} else if s.Window < s.Interval {
		add("window", `%q must be at least %s (%q): samples are averaged over the window`, s.Window, path.Child("interval"), s.Interval)
	}
	if s.Source != load.SourceAllocations && s.Source != load.SourceHost {
		add("source", `%q must be %q (the allocations' own usage) or %q (whole-host usage)`, s.Source, load.SourceAllocations, load.SourceHost)
	}
	if err := s.Publish().Validate(s.Interval); err != nil {
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			if pe, ok := e.(*load.PolicyError); ok {
				add(pe.Field, "%s", pe.Detail)
			}
		}
	}
	if err := checkKey(s.Prefix); err != nil {
		add("prefix", "%v, e.g. %q", err, sdk.PrefixNodes)
	} else if err := checkOwnKey(s.folder()); err != nil {
		add("prefix", "%v", err)
	}
	return errs
}

// folder is the prefix as the folder of the node records: every key under
// it is one.
func (s Sample) folder() string {
	return strings.TrimSuffix(s.Prefix, "/") + "/"
}

// validate checks the rebalancer's fields, and its keys against the node
// records of sample.
func (r Rebalance) validate(path field.Path, sample Sample) []error {
	var errs []error
	add := func(name, format string, args ...any) {
		errs = append(errs, field.Errorf(path.Child(name), format, args...))
	}
	if r.Interval < minInterval {
		add("interval", `%q must be at least %s, e.g. "30s"`, r.Interval, minInterval)
	}
	if r.MoveTimeout <= 0 {
		add("move_timeout", `%q must be positive, e.g. "10m"`, r.MoveTimeout)
	}
	// No key may be among the node records; if sample.prefix is wrong, its
	// own error says so.
	folder := sample.folder()
	if checkKey(sample.Prefix) != nil || checkOwnKey(folder) != nil {
		folder = ""
	}
	for _, k := range []struct{ name, key, example string }{
		{"lock_key", r.LockKey, DefaultLockKey},
		{"state_key", r.StateKey, DefaultStateKey},
	} {
		if err := checkKey(k.key); err != nil {
			add(k.name, "%v, e.g. %q", err, k.example)
		} else if err := checkOwnKey(k.key); err != nil {
			add(k.name, "%v", err)
		} else if folder != "" && strings.HasPrefix(k.key, folder) {
			add(k.name, "%q must not be under sample.prefix (%q), where every key is a node's load record", k.key, sample.Prefix)
		}
	}
	if r.LockKey != "" && r.LockKey == r.StateKey {
		add("state_key", "%q must differ from %s", r.StateKey, path.Child("lock_key"))
	}
	return append(errs, r.Policy.ValidateAt(path)...)
}

// validateCapacity checks each pool's name and policy, in the order of the
// names.
func validateCapacity(path field.Path, pools map[string]capacity.Policy) []error {
	var errs []error
	for _, pool := range slices.Sorted(maps.Keys(pools)) {
		at := path.Label(pool)
		if err := checkPoolName(pool); err != nil {
			errs = append(errs, field.Errorf(at, "the label is not a Nomad node pool name, which is 1 to %d letters, digits, \"-\" and \"_\": %v", maxPoolName, err))
		}
		errs = append(errs, unjoin(pools[pool].Validate(at))...)
	}
	return errs
}

// maxPoolName is the length of Nomad's longest node pool names.
const maxPoolName = 128

// checkPoolName says what is wrong with a Nomad node pool name, as the end
// of a sentence about it.
func checkPoolName(name string) error {
	valid := func(r rune) bool {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_'
	}
	if name == "" {
		return errors.New("it is empty")
	}
	for _, r := range name {
		if !valid(r) {
			return fmt.Errorf("it has %q", string(r))
		}
	}
	if len(name) > maxPoolName {
		return fmt.Errorf("it has %d characters", len(name))
	}
	return nil
}

// unjoin is the errors that errors.Join joined into err; none if err is nil.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkHostPort says what is wrong with a host:port, as the end of a
// sentence about it. An empty host is allowed unless needHost.
func checkHostPort(s string, needHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("is not host:port")
	}
	if needHost && host == "" {
		return errors.New("lacks the host")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("has port %q, not a number from 0 to 65535", port)
	}
	if needHost && n == 0 {
		return errors.New("has port 0")
	}
	return nil
}

// checkURL says what is wrong with an http or https URL, as the end of a
// sentence about it.
func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case !strings.Contains(s, "://"):
		return errors.New("must be an http:// or https:// URL")
	case err != nil:
		return errors.New("is not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("must be an http:// or https:// URL")
	case u.Host == "":
		return errors.New("lacks the host")
	case u.Port() != "":
		if err := checkHostPort(u.Host, true); err != nil {
			return err
		}
	}
	return nil
}

// checkKey says what is wrong with a Consul KV key or prefix.
func checkKey(k string) error {
	switch {
	case k == "":
		return errors.New("required")
	case strings.HasPrefix(k, "/"):
		return fmt.Errorf("%q must not start with \"/\" (Consul KV keys have no leading slash)", k)
	case strings.TrimSpace(k) != k:
		return fmt.Errorf("%q must not start or end with spaces", k)
	}
	return nil
}

// minInterval is the shortest sampling or planning interval: shorter ones
// would only load Nomad and Consul.
const minInterval = time.Second

// checkOwnKey refuses a key (or a prefix ending in "/") that would mix with
// the records the drivers and the mover keep.
func checkOwnKey(k string) error {
	for _, p := range sdk.FixedPrefixes {
		if strings.HasPrefix(k, p) || strings.HasPrefix(p, k) {
			return fmt.Errorf("%q must not overlap %q, where ferry keeps other records", k, p)
		}
	}
	return nil
}
