package runc

import (
	"context"
	"encoding/json"
	"fmt"
)

// Stats is a resource usage sample of one container, from
// `runc events --stats`.
type Stats struct {
	CPU    CPUStats
	Memory MemoryStats
}

// CPUStats holds CPU usage in nanoseconds and CFS throttling counters.
type CPUStats struct {
	TotalNs  uint64
	KernelNs uint64
	UserNs   uint64
	PerCPUNs []uint64

	ThrottlingPeriods uint64
	ThrottledPeriods  uint64
	ThrottledTimeNs   uint64
}

// MemoryStats holds memory usage in bytes.
type MemoryStats struct {
	Usage    uint64
	MaxUsage uint64
	Limit    uint64
	Cache    uint64
	RSS      uint64
	Swap     uint64
}

// eventsStats mirrors the parts of runc's events JSON that Stats uses.
type eventsStats struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data struct {
		CPU struct {
			Usage struct {
				Total  uint64   `json:"total"`
				Percpu []uint64 `json:"percpu"`
				Kernel uint64   `json:"kernel"`
				User   uint64   `json:"user"`
			} `json:"usage"`
			Throttling struct {
				Periods          uint64 `json:"periods"`
				ThrottledPeriods uint64 `json:"throttledPeriods"`
				ThrottledTime    uint64 `json:"throttledTime"`
			} `json:"throttling"`
		} `json:"cpu"`
		Memory struct {
			Cache uint64            `json:"cache"`
			Usage memoryEntry       `json:"usage"`
			Swap  memoryEntry       `json:"swap"`
			Raw   map[string]uint64 `json:"raw"`
		} `json:"memory"`
	} `json:"data"`
}

type memoryEntry struct {
	Limit uint64 `json:"limit"`
	Usage uint64 `json:"usage"`
	Max   uint64 `json:"max"`
}

// Stats returns a resource usage sample of container id.
func (r *Runc) Stats(ctx context.Context, id string) (*Stats, error) {
	out, err := r.output(ctx, "events --stats "+id, "events", "--stats", id)
	if err != nil {
		return nil, err
	}
	s, err := parseStats(out)
	if err != nil {
		return nil, fmt.Errorf("runc events --stats %s: %w", id, err)
	}
	return s, nil
}

func parseStats(out []byte) (*Stats, error) {
	var ev eventsStats
	if err := json.Unmarshal(out, &ev); err != nil {
		return nil, fmt.Errorf("decode %q: %w", truncate(string(out)), err)
	}
	if ev.Type != "stats" {
		return nil, fmt.Errorf("unexpected event type %q", ev.Type)
	}
	d := ev.Data
	s := &Stats{
		CPU: CPUStats{
			TotalNs:           d.CPU.Usage.Total,
			KernelNs:          d.CPU.Usage.Kernel,
			UserNs:            d.CPU.Usage.User,
			PerCPUNs:          d.CPU.Usage.Percpu,
			ThrottlingPeriods: d.CPU.Throttling.Periods,
			ThrottledPeriods:  d.CPU.Throttling.ThrottledPeriods,
			ThrottledTimeNs:   d.CPU.Throttling.ThrottledTime,
		},
		Memory: MemoryStats{
			Usage:    d.Memory.Usage.Usage,
			MaxUsage: d.Memory.Usage.Max,
			Limit:    d.Memory.Usage.Limit,
			Cache:    d.Memory.Cache,
		},
	}
	raw := d.Memory.Raw
	// cgroup v1 reports hierarchical totals as total_*; cgroup v2 reports
	// page cache as "file" and anonymous memory as "anon".
	if v, ok := firstKey(raw, "total_cache", "cache", "file"); ok {
		s.Memory.Cache = v
	}
	if v, ok := firstKey(raw, "total_rss", "rss", "anon"); ok {
		s.Memory.RSS = v
	}
	// runc's swap entry counts memory plus swap; v1 also reports swap
	// alone as total_swap.
	if v, ok := firstKey(raw, "total_swap", "swap"); ok {
		s.Memory.Swap = v
	} else if d.Memory.Swap.Usage > d.Memory.Usage.Usage {
		s.Memory.Swap = d.Memory.Swap.Usage - d.Memory.Usage.Usage
	}
	return s, nil
}

func firstKey(m map[string]uint64, keys ...string) (uint64, bool) {
	for _, k := range keys {
		if v, ok := m[k]; ok {
			return v, true
		}
	}
	return 0, false
}
