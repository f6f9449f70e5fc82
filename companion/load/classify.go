package load

import (
	"strconv"

	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/nomad/api"
)

// Classify describes a running allocation as the planner sees it, without
// its measured usage: its job's type and priority, whether it is online
// work, how it may move, what Nomad reserved for it, and its group's size.
// Jobs at or above onlinePriority are online, as are service and system
// jobs whatever their priority.
//
// An allocation that arrives without its job cannot be shown to be movable
// and counts as online.
func Classify(a *api.Allocation, onlinePriority int) Alloc {
	out := Alloc{
		ID:    a.ID,
		Name:  a.Name,
		JobID: a.JobID,
		Group: a.TaskGroup,
	}
	job := a.Job
	if job == nil {
		out.Online = true
		out.Reserved = reserved(a, nil)
		return out
	}
	if out.JobID == "" {
		out.JobID = deref(job.ID, "")
	}
	out.JobType = deref(job.Type, api.JobTypeService)
	out.Priority = deref(job.Priority, api.JobDefaultPriority)
	out.Online = out.JobType == api.JobTypeService ||
		out.JobType == api.JobTypeSystem ||
		out.Priority >= onlinePriority
	out.RestartMove = job.Meta[sdk.MetaRestartMove] == "true"
	out.CrossArch = job.Meta[sdk.MetaCrossArch] == "true"

	group := findGroup(job, a.TaskGroup)
	out.Reserved = reserved(a, group)
	if group != nil {
		out.Checkpoint = checkpointed(group)
		out.GroupCount = deref(group.Count, 1)
		out.MinHealthy = minHealthy(out.JobType, out.GroupCount, job, group)
	}
	return out
}

// findGroup returns the job's task group of that name, or nil.
func findGroup(job *api.Job, name string) *api.TaskGroup {
	for _, g := range job.TaskGroups {
		if g != nil && deref(g.Name, "") == name {
			return g
		}
	}
	return nil
}

// reserved is what Nomad reserved for the allocation's tasks: their
// allocated resources, or else the resources the allocation or its group
// asked for.
func reserved(a *api.Allocation, group *api.TaskGroup) Resources {
	var r Resources
	if ar := a.AllocatedResources; ar != nil && len(ar.Tasks) > 0 {
		for _, t := range ar.Tasks {
			if t == nil {
				continue
			}
			r.CPU += float64(t.Cpu.CpuShares)
			r.MemoryMB += float64(t.Memory.MemoryMB)
		}
		return r
	}
	if len(a.TaskResources) > 0 {
		for _, res := range a.TaskResources {
			r = r.add(requested(res))
		}
		return r
	}
	if group != nil {
		r = GroupReserved(group)
	}
	return r
}

// GroupReserved is what one allocation of group g asks for: the sum of its
// tasks' resources blocks.
func GroupReserved(g *api.TaskGroup) Resources {
	var r Resources
	for _, t := range g.Tasks {
		if t != nil {
			r = r.add(requested(t.Resources))
		}
	}
	return r
}

// requested converts a task's resources block.
func requested(res *api.Resources) Resources {
	if res == nil {
		return Resources{}
	}
	return Resources{
		CPU:      float64(deref(res.CPU, 0)),
		MemoryMB: float64(deref(res.MemoryMB, 0)),
	}
}

// checkpointed reports whether every task of the group runs on the ferry
// driver with checkpoint.enabled set, so that the allocation can move live.
func checkpointed(g *api.TaskGroup) bool {
	if len(g.Tasks) == 0 {
		return false
	}
	for _, t := range g.Tasks {
		if t == nil || t.Driver != sdk.DriverName || !checkpointEnabled(t.Config) {
			return false
		}
	}
	return true
}

// checkpointEnabled reads checkpoint.enabled from a ferry task's config. The
// block decodes as a map, or as a list holding one map, depending on how the
// job was submitted.
func checkpointEnabled(config map[string]any) bool {
	block, ok := singleBlock(config["checkpoint"])
	if !ok {
		return false
	}
	return truthy(block["enabled"])
}

func singleBlock(v any) (map[string]any, bool) {
	switch b := v.(type) {
	case map[string]any:
		return b, true
	case []map[string]any:
		if len(b) == 1 {
			return b[0], b[0] != nil
		}
	case []any:
		if len(b) == 1 {
			m, ok := b[0].(map[string]any)
			return m, ok
		}
	}
	return nil, false
}

func truthy(v any) bool {
	switch b := v.(type) {
	case bool:
		return b
	case string:
		ok, err := strconv.ParseBool(b)
		return err == nil && ok
	}
	return false
}

// minHealthy is how many allocations of the group must keep running while
// one moves: count - migrate.max_parallel for service jobs (max_parallel
// defaults to 1, as in Nomad), never below 0; 0 for every other job type.
func minHealthy(jobType string, count int, job *api.Job, g *api.TaskGroup) int {
	if jobType != api.JobTypeService {
		return 0
	}
	maxParallel := 1
	switch {
	case g.Migrate != nil && g.Migrate.MaxParallel != nil:
		maxParallel = *g.Migrate.MaxParallel
	case job.Migrate != nil && job.Migrate.MaxParallel != nil:
		maxParallel = *job.Migrate.MaxParallel
	}
	return max(count-maxParallel, 0)
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
