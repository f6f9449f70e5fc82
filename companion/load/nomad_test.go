package load

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// fakeNomad serves the four Nomad API endpoints the sampler reads, from
// state a test changes between samples.
type fakeNomad struct {
	mu     sync.Mutex
	node   *api.Node
	allocs []*api.Allocation
	stats  map[string]*api.AllocResourceUsage // by alloc ID; missing: 500
	host   *api.HostStats
}

func (f *fakeNomad) set(fn func(f *fakeNomad)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNomad) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("X-Nomad-Index", "1")
	w.Header().Set("X-Nomad-LastContact", "0")
	w.Header().Set("X-Nomad-KnownLeader", "true")
	path := r.URL.Path
	var out any
	switch {
	case path == "/v1/client/stats" && r.URL.Query().Get("node_id") == f.node.ID && f.host != nil:
		out = f.host
	case strings.HasPrefix(path, "/v1/client/allocation/") && strings.HasSuffix(path, "/stats"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/client/allocation/"), "/stats")
		st, ok := f.stats[id]
		if !ok {
			http.Error(w, "unknown allocation ID", http.StatusInternalServerError)
			return
		}
		out = st
	case path == "/v1/node/"+f.node.ID+"/allocations":
		out = f.allocs
	case path == "/v1/node/"+f.node.ID:
		out = f.node
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// startFakeNomad serves f and returns a Nomad client of it.
func startFakeNomad(t *testing.T, f *fakeNomad) *api.Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: srv.URL})
	must.NoError(t, err)
	return client
}

// testNode is a node of 4 cores of 1000 MHz and 8 GiB, 500 MHz and 1 GiB of
// which are reserved.
func testNode() *api.Node {
	return &api.Node{
		ID:   "node-1-id",
		Name: "node-1",
		NodeResources: &api.NodeResources{
			Cpu:    api.NodeCpuResources{CpuShares: 4000, TotalCpuCores: 4},
			Memory: api.NodeMemoryResources{MemoryMB: 8192},
		},
		ReservedResources: &api.NodeReservedResources{
			Cpu:    api.NodeReservedCpuResources{CpuShares: 500},
			Memory: api.NodeReservedMemoryResources{MemoryMB: 1024},
		},
	}
}

// runningAlloc is a running allocation of a one-task group of count 1.
func runningAlloc(id, jobID, jobType string, priority int) *api.Allocation {
	return &api.Allocation{
		ID:           id,
		Name:         jobID + ".g[0]",
		NodeID:       "node-1-id",
		JobID:        jobID,
		TaskGroup:    "g",
		ClientStatus: api.AllocClientStatusRunning,
		AllocatedResources: &api.AllocatedResources{Tasks: map[string]*api.AllocatedTaskResources{
			"main": {Cpu: api.AllocatedCpuResources{CpuShares: 500}, Memory: api.AllocatedMemoryResources{MemoryMB: 256}},
		}},
		Job: &api.Job{
			ID:       new(jobID),
			Type:     new(jobType),
			Priority: new(priority),
			TaskGroups: []*api.TaskGroup{{
				Name:  new("g"),
				Count: new(1),
				Tasks: []*api.Task{{
					Name:   "main",
					Driver: "ferry",
					Config: map[string]any{"checkpoint": []map[string]any{{"enabled": true}}},
				}},
			}},
		},
	}
}

func usageStats(cpuMHz float64, memMiB uint64) *api.AllocResourceUsage {
	return &api.AllocResourceUsage{ResourceUsage: &api.ResourceUsage{
		CpuStats:    &api.CpuStats{TotalTicks: cpuMHz},
		MemoryStats: &api.MemoryStats{RSS: memMiB << 20},
	}}
}
