package load

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/api"
)

// statsConcurrency bounds the allocation stats requests in flight at once.
const statsConcurrency = 8

// nodeKey is the node's series in the sampler's node window.
const nodeKey = "node"

// SamplerConfig configures a Sampler.
type SamplerConfig struct {
	NodeID string // the Nomad node sampled: required
	// NodeName is published with the record; empty takes the node's name
	// from Nomad.
	NodeName string
	// Window is how far back samples are averaged; zero or less reports
	// the latest sample alone.
	Window time.Duration
	// Source is SourceAllocations (the default when empty) or SourceHost.
	Source string
	// OnlinePriority: jobs at or above it are online, as are service and
	// system jobs. A Nomad job priority, 1 to 100.
	OnlinePriority int
}

// Validate checks every field and names the one that is wrong.
func (c SamplerConfig) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("node ID: required: the Nomad node to sample"))
	}
	switch c.Source {
	case "", SourceAllocations, SourceHost:
	default:
		errs = append(errs, fmt.Errorf("source: %q is not supported; use %q or %q", c.Source, SourceAllocations, SourceHost))
	}
	if c.OnlinePriority < 1 || c.OnlinePriority > 100 {
		errs = append(errs, fmt.Errorf("online priority: %d must be a Nomad job priority between 1 and 100", c.OnlinePriority))
	}
	return errors.Join(errs...)
}

// Sampler measures one node's load through the Nomad API and smooths it.
// Its methods are safe for concurrent use, though samples are meant to be
// taken one after another.
type Sampler struct {
	nomad  *api.Client
	cfg    SamplerConfig
	logger hclog.Logger
	now    func() time.Time

	mu     sync.Mutex
	allocs *window // measured usage per allocation ID
	node   *window // the node's measured total, under nodeKey

	warnedUnmeasured atomic.Bool // the client collects no allocation stats
}

// NewSampler returns a sampler of cfg.NodeID; Sample checks cfg.
func NewSampler(nomad *api.Client, cfg SamplerConfig, logger hclog.Logger) *Sampler {
	if cfg.Source == "" {
		cfg.Source = SourceAllocations
	}
	return &Sampler{
		nomad:  nomad,
		cfg:    cfg,
		logger: logger,
		now:    time.Now,
		allocs: newWindow(cfg.Window),
		node:   newWindow(cfg.Window),
	}
}

// Sample takes one sample of the node and returns its record, smoothed over
// the window. Allocations are those the node runs now (client status
// running), each with the mean of its own samples in the window (fewer than
// Samples if it started within the window); allocations gone from the node
// are forgotten. A failed sample changes nothing.
func (s *Sampler) Sample(ctx context.Context) (Record, error) {
	id := s.cfg.NodeID
	if err := s.cfg.Validate(); err != nil {
		return Record{}, fmt.Errorf("sample node %s: %w", id, err)
	}
	q := (&api.QueryOptions{AllowStale: true}).WithContext(ctx)

	node, _, err := s.nomad.Nodes().Info(id, q)
	if err != nil {
		return Record{}, fmt.Errorf("sample node %s: read node: %w", id, err)
	}
	total, capacity, err := nodeCapacity(node)
	if err != nil {
		return Record{}, fmt.Errorf("sample node %s: %w", id, err)
	}
	all, _, err := s.nomad.Nodes().Allocations(id, q)
	if err != nil {
		return Record{}, fmt.Errorf("sample node %s: list allocations: %w", id, err)
	}
	running := slices.DeleteFunc(all, func(a *api.Allocation) bool {
		return a == nil || a.ClientStatus != api.AllocClientStatusRunning
	})
	usage, measured := s.measure(q, running)

	var host Resources
	if s.cfg.Source == SourceHost {
		hs, err := s.nomad.Nodes().Stats(id, q)
		if err != nil {
			return Record{}, fmt.Errorf("sample node %s: host stats: %w", id, err)
		}
		host = hostUsage(hs, total.CPU)
	}
	// Stats calls cut short by the end of ctx failed, not measured zero:
	// keep them out of the window.
	if err := ctx.Err(); err != nil {
		return Record{}, fmt.Errorf("sample node %s: %w", id, err)
	}

	name := s.cfg.NodeName
	if name == "" {
		name = node.Name
	}
	return s.record(s.now(), name, capacity, running, usage, measured, host), nil
}

// measure returns each allocation's measured usage, in order, and whether
// it could be read. An allocation whose stats cannot be read (it may just
// have stopped, or its client be too busy to answer) gets no sample this
// time: its mean over the window stands.
func (s *Sampler) measure(q *api.QueryOptions, allocs []*api.Allocation) ([]Resources, []bool) {
	out := make([]Resources, len(allocs))
	ok := make([]bool, len(allocs))
	sem := make(chan struct{}, statsConcurrency)
	var wg sync.WaitGroup
	var unmeasured atomic.Int32 // stats answered, but never collected
	for i, a := range allocs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := s.nomad.Allocations().Stats(a, q)
			if err != nil {
				s.logger.Debug("allocation stats unavailable, no sample this time",
					"node_id", s.cfg.NodeID, "alloc_id", a.ID, "alloc_name", a.Name, "error", err)
				return
			}
			if st.Timestamp == 0 && len(st.Tasks) == 0 {
				unmeasured.Add(1)
			}
			out[i], ok[i] = allocUsage(st), true
		})
	}
	wg.Wait()
	if n := unmeasured.Load(); n > 0 && int(n) == len(allocs) && s.warnedUnmeasured.CompareAndSwap(false, true) {
		s.logger.Warn("the Nomad client reports no measured usage for any allocation: set telemetry { publish_allocation_metrics = true } in the client's agent configuration so it collects allocation stats",
			"node_id", s.cfg.NodeID, "allocs", n)
	}
	return out, ok
}

// record adds one sample to the windows and builds the smoothed record.
func (s *Sampler) record(now time.Time, name string, capacity Resources, running []*api.Allocation, usage []Resources, measured []bool, host Resources) Record {
	s.mu.Lock()
	defer s.mu.Unlock()

	present := make(map[string]bool, len(running))
	allocs := make([]Alloc, 0, len(running))
	var total, online, offline Resources
	for i, a := range running {
		present[a.ID] = true
		if measured[i] {
			s.allocs.add(a.ID, now, usage[i])
		}
		al := Classify(a, s.cfg.OnlinePriority)
		al.Usage, _ = s.allocs.mean(a.ID)
		total = total.add(al.Usage)
		if al.Online {
			online = online.add(al.Usage)
		} else {
			offline = offline.add(al.Usage)
		}
		// One that Nomad is stopping still uses the node, but is not
		// there to be moved.
		if a.DesiredStatus == "" || a.DesiredStatus == api.AllocDesiredStatusRun {
			allocs = append(allocs, al)
		}
	}
	s.allocs.retain(func(id string) bool { return present[id] })

	if s.cfg.Source == SourceHost {
		total = host
	}
	s.node.add(nodeKey, now, total)
	nodeMean, samples := s.node.mean(nodeKey)
	if s.cfg.Source == SourceHost {
		// Whatever the offline allocations do not account for is online:
		// system daemons and services alike.
		online = nodeMean.sub(offline)
	}

	slices.SortFunc(allocs, func(x, y Alloc) int {
		if n := strings.Compare(x.Name, y.Name); n != 0 {
			return n
		}
		return strings.Compare(x.ID, y.ID)
	})
	return Record{
		NodeID:    s.cfg.NodeID,
		NodeName:  name,
		SampledAt: now.UTC(),
		Source:    s.cfg.Source,
		Samples:   samples,
		Window:    s.cfg.Window.String(),
		Capacity:  capacity,
		Online:    online,
		Offline:   offline,
		Allocs:    allocs,
	}
}
