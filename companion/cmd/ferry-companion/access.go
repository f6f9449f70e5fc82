package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"

	"github.com/ferry-nomad/ferry/companion/config"
	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/ferry-nomad/ferry/driver/catalog"
	consul "github.com/hashicorp/consul/api"
	nomad "github.com/hashicorp/nomad/api"
)

// The policies the companion's tokens need, as shipped.
const (
	nomadPolicy  = "jobspecs/acl/companion.nomad.hcl"
	consulPolicy = "jobspecs/acl/companion.consul.hcl"
)

// A denial is what a token was refused, with what its policy must grant.
type denial struct {
	setting string // the token's setting, as config.Setting names it
	policy  string // the shipped policy that grants it
	what    string // what was refused, "read node 9c0e1a5e"
	grant   string // the rule that grants it, as the policy writes it
	err     error  // the refusal
}

func (d *denial) Error() string {
	if unknownToken(d.err) {
		return fmt.Sprintf("%s: the token was refused to %s as unknown: give the secret ID of a token created with the policy in %s: %v",
			d.setting, d.what, d.policy, d.err)
	}
	return fmt.Sprintf("%s: permission denied to %s: the token's policy needs %s (as in %s): %v",
		d.setting, d.what, d.grant, d.policy, d.err)
}

func (d *denial) Unwrap() error { return d.err }

// statusOf is the HTTP status of an error from Nomad's or Consul's API, 0
// if it has none.
func statusOf(err error) int {
	var coded interface{ StatusCode() int } // Nomad's UnexpectedResponseError
	if errors.As(err, &coded) {
		return coded.StatusCode()
	}
	var se consul.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// denied is a denial if err is a 403 refusal, else err.
func denied(err error, setting, policy, what, grant string) error {
	if err == nil || statusOf(err) != http.StatusForbidden {
		return err
	}
	return &denial{setting: setting, policy: policy, what: what, grant: grant, err: err}
}

// unknownToken says whether err is Nomad's or Consul's refusal of a token
// it does not know.
func unknownToken(err error) bool {
	return strings.Contains(err.Error(), "ACL token not found") || strings.Contains(err.Error(), "ACL not found")
}

// Nomad's and Consul's 403s, for errors that say what was refused but not
// which rule grants it.
func isDenied(err error) bool {
	return statusOf(err) == http.StatusForbidden ||
		strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "ACL not found")
}

// explainDenied adds to a command's error, when a token was refused, which
// settings hold the tokens and which policies they need.
func explainDenied(err error) error {
	var d *denial
	if err == nil || errors.As(err, &d) || !isDenied(err) {
		return err
	}
	return fmt.Errorf("%w\n(an ACL token was refused: the Nomad token, %s, needs %s; the Consul token, %s, needs %s)",
		err, tokenSetting("nomad"), nomadPolicy, tokenSetting("consul"), consulPolicy)
}

// tokenSetting names the settings of the token of block, nomad or consul:
// "nomad.token (-nomad-token, NOMAD_TOKEN) or nomad.token_file (...)".
func tokenSetting(block string) string {
	return config.Setting(field.Path(block).Child("token")) + " or " + config.Setting(field.Path(block).Child("token_file"))
}

// checkAccess makes sure, before the agent starts, that its tokens grant
// what it needs, so that a missing rule stops it at once with an error
// naming the token's setting and the rule, rather than failing its
// rounds one by one. With ACLs off every check passes. Nothing is
// changed: the writes are ones Nomad and Consul refuse before doing
// anything, for want either of the rule or of a valid request.
func checkAccess(ctx context.Context, cfg *config.Config, nc *nomad.Client, cc *consul.Client) error {
	nset, cset := tokenSetting("nomad"), tokenSetting("consul")
	nodeID := cfg.NodeID
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	if _, _, err := nc.Nodes().Info(nodeID, q); err != nil {
		return denied(fmt.Errorf("read node %s: %w", nodeID, err), nset, nomadPolicy,
			"read this node", `node { policy = "read" } (or "write")`)
	}
	if id := os.Getenv("NOMAD_ALLOC_ID"); id != "" {
		if _, _, err := nc.Allocations().Info(id, q); err != nil {
			return denied(fmt.Errorf("read allocation %s: %w", id, err), nset, nomadPolicy,
				"read allocations", `namespace "*" { capabilities = ["list-jobs", "read-job", "alloc-lifecycle"] }`)
		}
	}
	// Pool sizing lists the jobs of every namespace.
	if len(cfg.Capacity) > 0 {
		all := (&nomad.QueryOptions{Namespace: "*", PerPage: 1}).WithContext(ctx)
		if _, _, err := nc.Jobs().List(all); err != nil {
			return denied(fmt.Errorf("list jobs: %w", err), nset, nomadPolicy,
				"list jobs (for pool sizing)", `the capability "list-jobs" in namespace "*" { capabilities = [...] }`)
		}
	}
	// An empty update of the node's metadata: refused for want of node
	// write before it is refused as empty.
	_, err := nc.Nodes().Meta().Apply(&nomad.NodeMetaApplyRequest{NodeID: nodeID, Meta: map[string]*string{}}, q)
	if statusOf(err) == http.StatusForbidden {
		return denied(fmt.Errorf("update node %s's metadata: %w", nodeID, err), nset, nomadPolicy,
			"write nodes (their eligibility and meta)", `node { policy = "write" }`)
	}

	key := cfg.Sample.Prefix + nodeID
	cq := (&consul.QueryOptions{}).WithContext(ctx)
	if _, _, err := cc.KV().Get(key, cq); err != nil {
		return denied(fmt.Errorf("read %s: %w", key, err), cset, consulPolicy,
			"read the ferry/ keys", `key_prefix "ferry/" { policy = "write" }`)
	}
	// A check-and-set no key has the index of: refused for want of key
	// write, else it writes nothing.
	cw := (&consul.WriteOptions{}).WithContext(ctx)
	if _, _, err := cc.KV().CAS(&consul.KVPair{Key: key, ModifyIndex: math.MaxUint64}, cw); err != nil {
		return denied(fmt.Errorf("write %s: %w", key, err), cset, consulPolicy,
			"write the ferry/ keys", `key_prefix "ferry/" { policy = "write" }`)
	}
	sid, err := catalog.CreateSession(ctx, cc, "ferry-companion access check", 0)
	if err != nil {
		return denied(err, cset, consulPolicy, "create sessions", `session_prefix "" { policy = "write" }`)
	}
	return catalog.DestroySession(ctx, cc, sid)
}
