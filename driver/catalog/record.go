package catalog

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// State is where a task's checkpoint is in its life.
type State string

const (
	// StateCheckpointing: the source is dumping the task.
	StateCheckpointing State = "checkpointing"
	// StateReady: the checkpoint is complete and may be restored.
	StateReady State = "ready"
	// StateRestoring: a destination has claimed the checkpoint and is
	// restoring it.
	StateRestoring State = "restoring"
	// StateRestoringLazy: the destination runs the restored task while
	// its memory still arrives from the source (a lazy move: see
	// Record.Lazy); the source keeps serving it until StateRestored.
	StateRestoringLazy State = "restoring_lazy"
	// StateRestored: the destination runs the restored task.
	StateRestored State = "restored"
	// StateFailed: the checkpoint or the restore failed (see Reason).
	StateFailed State = "failed"
	// StateColdStart: no checkpoint will be restored; the replacement
	// starts the task from scratch (see Reason).
	StateColdStart State = "cold_start"
)

// Valid reports whether s is one of the State constants.
func (s State) Valid() bool {
	switch s {
	case StateCheckpointing, StateReady, StateRestoring, StateRestoringLazy, StateRestored, StateFailed, StateColdStart:
		return true
	}
	return false
}

// Terminal reports whether no further transition is expected from s.
func (s State) Terminal() bool {
	return s == StateRestored || s == StateFailed || s == StateColdStart
}

// Port is one port mapping of the task's network.
type Port struct {
	Label  string `json:"label"`
	Value  int    `json:"value"`
	To     int    `json:"to,omitempty"`
	HostIP string `json:"host_ip,omitempty"`
}

// DNS is the task's resolver configuration.
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// Network is the container's network configuration at checkpoint time, so
// that the destination can set up the same before restoring.
type Network struct {
	// Mode is "host" or "group".
	Mode      string `json:"mode"`
	NetNSPath string `json:"netns_path,omitempty"`
	// Addresses are CIDRs, e.g. "172.26.64.5/20".
	Addresses []string `json:"addresses,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	Gateway   string   `json:"gateway,omitempty"`
	Routes    []string `json:"routes,omitempty"`
	Ports     []Port   `json:"ports,omitempty"`
	Hostname  string   `json:"hostname,omitempty"`
	DNS       *DNS     `json:"dns,omitempty"`
}

// Grant lets one node make the requests of one move of one task's
// checkpoint, until it expires: the node presents a secret whose sha256 is
// SHA256. The secret never leaves the node that made it, and never goes to
// Consul.
type Grant struct {
	NodeID  string    `json:"node_id"`
	SHA256  string    `json:"sha256"`
	Expires time.Time `json:"expires"`
}

// LazyTransfer is where a lazy move's source serves the task's memory, and
// how much of it the destination still lacks.
type LazyTransfer struct {
	// PageServer is the source's CRIU page server, "host:port" (mutual
	// TLS with the nodes' transfer certificates).
	PageServer string `json:"page_server"`
	// Pages is how many pages the task's memory holds; PagesLeft how many
	// have not arrived yet, as the destination last recorded.
	Pages     int64 `json:"pages,omitempty"`
	PagesLeft int64 `json:"pages_left,omitempty"`
}

// Record is the catalogue entry of one task's checkpoint. It is keyed by the
// source allocation's ID and the task name: the replacement allocation finds
// it through its PreviousAllocation.
type Record struct {
	AllocID   string `json:"alloc_id"`
	Task      string `json:"task"`
	JobID     string `json:"job_id,omitempty"`
	Namespace string `json:"namespace,omitempty"`

	SourceNodeID   string `json:"source_node_id,omitempty"`
	SourceNodeName string `json:"source_node_name,omitempty"`

	State State `json:"state"`
	// Reason explains StateFailed and StateColdStart.
	Reason string `json:"reason,omitempty"`

	ImageRef    string `json:"image_ref,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	Platform    string `json:"platform,omitempty"`

	Bytes int64 `json:"bytes,omitempty"`
	Files int   `json:"files,omitempty"`
	// ManifestSHA256 is the sha256 (hex) of the checkpoint's manifest, set
	// when the record becomes ready: the destination checks the manifest
	// it got against it before reading it. No path is ever recorded: each
	// node derives where a checkpoint lives from its own configuration and
	// the record's allocation ID and task.
	ManifestSHA256 string `json:"manifest_sha256,omitempty"`
	// Shared: the checkpoint lives in a checkpoint_dir every node mounts,
	// so the destination reads it in place instead of transferring it.
	Shared bool `json:"shared,omitempty"`
	// Periodic names the periodic checkpoint (in the shared
	// checkpoint_dir) a replacement resumes from, on the record it builds
	// for that (Periodic.Restorable), which is never stored.
	Periodic     string        `json:"-"`
	DumpDuration time.Duration `json:"dump_duration,omitempty"`

	// Push lets the source push the checkpoint to Push.NodeID while it
	// dumps it; Fetch lets the destination (Fetch.NodeID) fetch it from the
	// source. Each is a per-move credential: only its sha256 is recorded.
	Push  *Grant `json:"push,omitempty"`
	Fetch *Grant `json:"fetch,omitempty"`

	// Lazy is set for a lazy (post-copy) move.
	Lazy *LazyTransfer `json:"lazy,omitempty"`

	Network Network `json:"network"`

	DestAllocID  string `json:"dest_alloc_id,omitempty"`
	DestNodeID   string `json:"dest_node_id,omitempty"`
	DestNodeName string `json:"dest_node_name,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Reap is how long the record is kept in each state, as its source's
	// driver was configured when it wrote it; nil is DefaultReapPolicy.
	Reap *ReapPolicy `json:"reap,omitempty"`

	// ModifyIndex is Consul's modify index of the entry this record was
	// read from (or last written as); it is not stored.
	ModifyIndex uint64 `json:"-"`
}

// Clone returns a deep copy of r.
func (r *Record) Clone() *Record {
	if r == nil {
		return nil
	}
	c := *r
	if r.Push != nil {
		g := *r.Push
		c.Push = &g
	}
	if r.Reap != nil {
		p := *r.Reap
		c.Reap = &p
	}
	if r.Lazy != nil {
		l := *r.Lazy
		c.Lazy = &l
	}
	if r.Fetch != nil {
		g := *r.Fetch
		c.Fetch = &g
	}
	c.Network.Addresses = slices.Clone(r.Network.Addresses)
	c.Network.Routes = slices.Clone(r.Network.Routes)
	c.Network.Ports = slices.Clone(r.Network.Ports)
	if r.Network.DNS != nil {
		dns := DNS{
			Servers:  slices.Clone(r.Network.DNS.Servers),
			Searches: slices.Clone(r.Network.DNS.Searches),
			Options:  slices.Clone(r.Network.DNS.Options),
		}
		c.Network.DNS = &dns
	}
	return &c
}

// CheckName rejects names that cannot be one segment of a Consul key;
// what says what the name is, for the error.
func CheckName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty %s", what)
	case name == "." || name == "..":
		return fmt.Errorf("invalid %s %q", what, name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("invalid %s %q: contains a slash or NUL", what, name)
	}
	return nil
}
