package load

import (
	"testing"

	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

func TestAllocUsage(t *testing.T) {
	cases := []struct {
		name  string
		stats *api.AllocResourceUsage
		want  Resources
	}{
		{"nil", nil, Resources{}},
		{"no resource usage", &api.AllocResourceUsage{}, Resources{}},
		{
			name: "RSS",
			stats: &api.AllocResourceUsage{ResourceUsage: &api.ResourceUsage{
				CpuStats:    &api.CpuStats{TotalTicks: 812.5},
				MemoryStats: &api.MemoryStats{RSS: 256 << 20, Usage: 512 << 20},
			}},
			want: Resources{CPU: 812.5, MemoryMB: 256},
		},
		{
			name: "usage when RSS is not measured",
			stats: &api.AllocResourceUsage{ResourceUsage: &api.ResourceUsage{
				MemoryStats: &api.MemoryStats{Usage: 96 << 20},
			}},
			want: Resources{MemoryMB: 96},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			must.Eq(t, tc.want, allocUsage(tc.stats))
		})
	}
}

func TestHostUsage(t *testing.T) {
	cases := []struct {
		name  string
		stats *api.HostStats
		want  Resources
	}{
		{"nil", nil, Resources{}},
		{
			name: "ticks consumed",
			stats: &api.HostStats{
				CPUTicksConsumed: 1234,
				CPU:              []*api.HostCPUStats{{Idle: 0}, {Idle: 0}},
				Memory:           &api.HostMemoryStats{Used: 1 << 30},
			},
			want: Resources{CPU: 1234, MemoryMB: 1024},
		},
		{
			name: "busy percent per core",
			// 4 cores of 1000 MHz each: 50% + 100% + 0% + 50% busy.
			stats: &api.HostStats{CPU: []*api.HostCPUStats{
				{Idle: 50}, {Idle: 0}, {Idle: 100}, {Idle: 50},
			}},
			want: Resources{CPU: 2000},
		},
		{
			name:  "percentages out of range are clamped",
			stats: &api.HostStats{CPU: []*api.HostCPUStats{{Idle: 120}, {Idle: -5}}},
			want:  Resources{CPU: 2000},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			must.Eq(t, tc.want, hostUsage(tc.stats, 4000))
		})
	}
}

func TestNodeCapacity(t *testing.T) {
	n := &api.Node{ID: "n1", NodeResources: &api.NodeResources{
		Cpu:    api.NodeCpuResources{CpuShares: 8000},
		Memory: api.NodeMemoryResources{MemoryMB: 16384},
	}}
	total, capacity, err := nodeCapacity(n)
	must.NoError(t, err)
	must.Eq(t, Resources{CPU: 8000, MemoryMB: 16384}, total)
	must.Eq(t, total, capacity)

	n.ReservedResources = &api.NodeReservedResources{
		Cpu:    api.NodeReservedCpuResources{CpuShares: 500},
		Memory: api.NodeReservedMemoryResources{MemoryMB: 20000},
	}
	total, capacity, err = nodeCapacity(n)
	must.NoError(t, err)
	must.Eq(t, Resources{CPU: 8000, MemoryMB: 16384}, total)
	must.Eq(t, Resources{CPU: 7500, MemoryMB: 0}, capacity)

	_, _, err = nodeCapacity(&api.Node{ID: "n2"})
	must.ErrorContains(t, err, "node n2 reports no resources")
}
