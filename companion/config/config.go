// Package config is ferry-companion's configuration: one HCL file, named by
// -config, whose every field the environment and the command line may
// override. See example.hcl for a complete file with every default.
//
// Values are taken, each overriding the one before:
//
//  1. the defaults (Default),
//  2. the file named by -config, if any,
//  3. the environment: NOMAD_ADDR_http, NOMAD_ADDR, CONSUL_HTTP_ADDR,
//  4. the flags given on the command line.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/catalog"
)

// Config is the companion's configuration. The comments give each field's
// name in the file and, where there is one, its flag and environment
// variable.
type Config struct {
	Listen    string // listen; -listen: host:port to serve /metrics and /v1/status on
	Advertise string // advertise; -advertise, NOMAD_ADDR_http: host:port other nodes reach this agent at
	NodeID    string // node_id; -node-id: this Nomad node's ID
	NodeName  string // node_name; -node-name: this Nomad node's name

	Nomad     Nomad  // nomad { address }; -nomad, NOMAD_ADDR
	Consul    Consul // consul { address }; -consul, CONSUL_HTTP_ADDR
	Sample    Sample
	Rebalance Rebalance

	// File is the configuration file that was read (-config), if any.
	File string
}

// Nomad is how the companion reaches the local Nomad agent.
type Nomad struct {
	Address string // an http:// or https:// URL
}

// Consul is how the companion reaches the local Consul agent.
type Consul struct {
	Address string // host:port, or an http:// or https:// URL
}

// Sample is how the companion measures its node's load.
type Sample struct {
	Interval time.Duration // sample.interval; -sample-interval: how often the node is sampled
	Window   time.Duration // sample.window; -sample-window: samples are averaged over this window
	Source   string        // sample.source; -sample-source: load.SourceAllocations or load.SourceHost
	Prefix   string        // sample.prefix: Consul KV prefix of the node load records
}

// Rebalance is the rebalancer: which node leads it, how often it plans, and
// its policy.
type Rebalance struct {
	Enabled     bool          // rebalance.enabled; -rebalance
	DryRun      bool          // rebalance.dry_run; -dry-run: decide and log, never move
	Interval    time.Duration // rebalance.interval; -rebalance-interval: one planning round per interval
	MoveTimeout time.Duration // rebalance.move_timeout: how long one move may take before it counts as failed
	LockKey     string        // rebalance.lock_key: Consul KV key of the leader lock
	StateKey    string        // rebalance.state_key: Consul KV key of the planner's state

	// Policy is written flat in the rebalance block: online_priority,
	// consecutive, cooldown, threshold "cpu" and "memory" { high, low } and
	// limits { in_flight, per_node, per_job, per_hour, per_round }.
	Policy planner.Config
}

// Defaults that are not another package's.
const (
	DefaultListen        = ":4700"
	DefaultNomadAddress  = "http://127.0.0.1:4646"
	DefaultConsulAddress = "127.0.0.1:8500"
	DefaultLockKey       = "ferry/leader"
	DefaultStateKey      = "ferry/planner/state"
)

// Default is the configuration before any file, environment or flag. It
// lacks what only the node can say: advertise and node_id.
func Default() Config {
	return Config{
		Listen: DefaultListen,
		Nomad:  Nomad{Address: DefaultNomadAddress},
		Consul: Consul{Address: DefaultConsulAddress},
		Sample: Sample{
			Interval: 5 * time.Second,
			Window:   30 * time.Second,
			Source:   load.SourceAllocations,
			Prefix:   load.DefaultPrefix,
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

// Validate checks every field and returns all problems at once, each naming
// the field as it is written in the file, with its flag and environment
// variable where it has them.
func (c *Config) Validate() error {
	return errors.Join(c.validate(true)...)
}

// validate checks the fields; the agent's own (listen, advertise, node_id)
// only when agent is set.
func (c *Config) validate(agent bool) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}

	// The agent's own fields; the operator commands (plan, status) only read
	// Consul and Nomad.
	if agent {
		errs = append(errs, c.validateAgent()...)
	}

	// Nomad and Consul.
	if c.Nomad.Address == "" {
		add(`nomad.address (-nomad, NOMAD_ADDR): required, e.g. %q`, DefaultNomadAddress)
	} else if err := checkURL(c.Nomad.Address); err != nil {
		add(`nomad.address (-nomad, NOMAD_ADDR): %q %v, e.g. %q`, c.Nomad.Address, err, DefaultNomadAddress)
	}
	if c.Consul.Address == "" {
		add(`consul.address (-consul, CONSUL_HTTP_ADDR): required, e.g. %q`, DefaultConsulAddress)
	} else {
		var err error
		if strings.Contains(c.Consul.Address, "://") {
			err = checkURL(c.Consul.Address)
		} else if err = checkHostPort(c.Consul.Address, true); err != nil {
			err = fmt.Errorf("%v, or an http:// or https:// URL", err)
		}
		if err != nil {
			add(`consul.address (-consul, CONSUL_HTTP_ADDR): %q %v, e.g. %q`, c.Consul.Address, err, DefaultConsulAddress)
		}
	}

	// Sampling.
	s := c.Sample
	if s.Interval < minInterval {
		add(`sample.interval (-sample-interval): %q must be at least %s, e.g. "5s"`, s.Interval, minInterval)
	} else if s.Window < s.Interval {
		add(`sample.window (-sample-window): %q must be at least sample.interval (%q): samples are averaged over the window`, s.Window, s.Interval)
	}
	if s.Source != load.SourceAllocations && s.Source != load.SourceHost {
		add(`sample.source (-sample-source): %q must be %q (the allocations' own usage) or %q (whole-host usage)`, s.Source, load.SourceAllocations, load.SourceHost)
	}
	// The records are the keys under the prefix as a folder.
	folder := ""
	if err := checkKey(s.Prefix); err != nil {
		add(`sample.prefix: %v, e.g. %q`, err, load.DefaultPrefix)
	} else if err := checkOwnKey(strings.TrimSuffix(s.Prefix, "/") + "/"); err != nil {
		add(`sample.prefix: %v`, err)
	} else {
		folder = strings.TrimSuffix(s.Prefix, "/") + "/"
	}

	// Rebalancing.
	r := c.Rebalance
	if r.Interval < minInterval {
		add(`rebalance.interval (-rebalance-interval): %q must be at least %s, e.g. "30s"`, r.Interval, minInterval)
	}
	if r.MoveTimeout <= 0 {
		add(`rebalance.move_timeout: %q must be positive, e.g. "10m"`, r.MoveTimeout)
	}
	keys := []struct{ name, key, example string }{
		{"rebalance.lock_key", r.LockKey, DefaultLockKey},
		{"rebalance.state_key", r.StateKey, DefaultStateKey},
	}
	for _, k := range keys {
		if err := checkKey(k.key); err != nil {
			add("%s: %v, e.g. %q", k.name, err, k.example)
		} else if err := checkOwnKey(k.key); err != nil {
			add("%s: %v", k.name, err)
		} else if folder != "" && strings.HasPrefix(k.key, folder) {
			add("%s: %q must not be under sample.prefix (%q), where every key is a node's load record", k.name, k.key, s.Prefix)
		}
	}
	if r.LockKey != "" && r.LockKey == r.StateKey {
		add("rebalance.state_key: %q must differ from rebalance.lock_key", r.StateKey)
	}
	errs = append(errs, policyErrors(r.Policy)...)
	return errs
}

// policyErrors are the planner's own checks, named as in the file: the
// policy is flat in the rebalance block, and its thresholds are labelled
// blocks.
func policyErrors(p planner.Config) []error {
	err := p.Validate()
	if err == nil {
		return nil
	}
	list := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	}
	rename := strings.NewReplacer(
		"thresholds.cpu", `rebalance.threshold "cpu"`,
		"thresholds.memory", `rebalance.threshold "memory"`,
	)
	errs := make([]error, len(list))
	for i, e := range list {
		msg := rename.Replace(e.Error())
		if !strings.HasPrefix(msg, "rebalance.") {
			msg = "rebalance." + msg
		}
		errs[i] = &policyError{msg: msg, err: e}
	}
	return errs
}

// policyError is one of the planner's errors, renamed.
type policyError struct {
	msg string
	err error
}

func (e *policyError) Error() string { return e.msg }
func (e *policyError) Unwrap() error { return e.err }

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
	for _, p := range []string{catalog.DefaultPrefix, catalog.DefaultMigrationPrefix, catalog.DefaultEndpointPrefix} {
		if strings.HasPrefix(k, p) || strings.HasPrefix(p, k) {
			return fmt.Errorf("%q must not overlap %q, where ferry keeps other records", k, p)
		}
	}
	return nil
}

// validateAgent checks the fields only an agent needs.
func (c *Config) validateAgent() []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if c.Listen == "" {
		add(`listen (-listen): required: the host:port to serve /metrics and /v1/status on, e.g. ":4700"`)
	} else if err := checkHostPort(c.Listen, false); err != nil {
		add(`listen (-listen): %q %v, e.g. ":4700"`, c.Listen, err)
	}
	if c.Advertise == "" {
		add("advertise (-advertise, NOMAD_ADDR_http): required: the host:port other nodes reach this agent at")
	} else if err := checkHostPort(c.Advertise, true); err != nil {
		add(`advertise (-advertise, NOMAD_ADDR_http): %q %v: the host:port other nodes reach this agent at, e.g. "10.0.0.5:4700"`, c.Advertise, err)
	}
	if c.NodeID == "" {
		add("node_id (-node-id): required: this Nomad node's ID (${node.unique.id} in the jobspec)")
	}
	return errs
}
