package load

import (
	"fmt"

	"github.com/hashicorp/nomad/api"
)

const bytesPerMiB = 1 << 20

func (r Resources) add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, MemoryMB: r.MemoryMB + o.MemoryMB}
}

// sub is r - o, each resource floored at 0.
func (r Resources) sub(o Resources) Resources {
	return Resources{CPU: max(r.CPU-o.CPU, 0), MemoryMB: max(r.MemoryMB-o.MemoryMB, 0)}
}

// nodeCapacity returns the node's whole CPU and memory as Nomad fingerprinted
// them, and its capacity for allocations: the whole minus what the operator
// reserved for the system (client reserved block), never below 0.
func nodeCapacity(n *api.Node) (total, capacity Resources, err error) {
	if n.NodeResources == nil {
		return Resources{}, Resources{}, fmt.Errorf("node %s reports no resources", n.ID)
	}
	total = Resources{
		CPU:      float64(n.NodeResources.Cpu.CpuShares),
		MemoryMB: float64(n.NodeResources.Memory.MemoryMB),
	}
	capacity = total
	if rr := n.ReservedResources; rr != nil {
		capacity = total.sub(Resources{
			CPU:      float64(rr.Cpu.CpuShares),
			MemoryMB: float64(rr.Memory.MemoryMB),
		})
	}
	return total, capacity, nil
}

// allocUsage converts an allocation's stats: CPU ticks are MHz in use, and
// memory is the resident set, or the cgroup's usage where RSS is not
// measured (RSS 0).
func allocUsage(u *api.AllocResourceUsage) Resources {
	if u == nil || u.ResourceUsage == nil {
		return Resources{}
	}
	var r Resources
	if c := u.ResourceUsage.CpuStats; c != nil {
		r.CPU = max(c.TotalTicks, 0)
	}
	if m := u.ResourceUsage.MemoryStats; m != nil {
		mem := m.RSS
		if mem == 0 {
			mem = m.Usage
		}
		r.MemoryMB = float64(mem) / bytesPerMiB
	}
	return r
}

// hostUsage converts the host's stats; totalMHz is the node's whole CPU (not
// less its reservation), which is what the host's CPU percentages are of.
// CPU is the ticks the client computed where it reports them, and otherwise
// each core's busy percentage (100 - idle, as Nomad counts it) summed and
// scaled to MHz: sum(busy)/100 * totalMHz / cores.
func hostUsage(h *api.HostStats, totalMHz float64) Resources {
	if h == nil {
		return Resources{}
	}
	var r Resources
	switch {
	case h.CPUTicksConsumed > 0:
		r.CPU = h.CPUTicksConsumed
	case len(h.CPU) > 0:
		var busy float64
		for _, c := range h.CPU {
			if c != nil {
				busy += min(max(100-c.Idle, 0), 100)
			}
		}
		r.CPU = busy / 100 * totalMHz / float64(len(h.CPU))
	}
	if h.Memory != nil {
		r.MemoryMB = float64(h.Memory.Used) / bytesPerMiB
	}
	return r
}
