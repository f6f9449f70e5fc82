package load

import (
	"testing"

	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// testAlloc is a running allocation of group "web" of a job of the given
// type and priority, whose tasks are given.
func testAlloc(jobType string, priority int, tasks ...*api.Task) *api.Allocation {
	return &api.Allocation{
		ID:           "a1",
		Name:         "job.web[0]",
		JobID:        "job",
		TaskGroup:    "web",
		ClientStatus: api.AllocClientStatusRunning,
		Job: &api.Job{
			ID:       new("job"),
			Type:     new(jobType),
			Priority: new(priority),
			TaskGroups: []*api.TaskGroup{
				{Name: new("other"), Count: new(7)},
				{Name: new("web"), Count: new(3), Tasks: tasks},
			},
		},
	}
}

func ferryTask(name string, config map[string]any) *api.Task {
	return &api.Task{Name: name, Driver: "ferry", Config: config}
}

func checkpointMap(enabled any) map[string]any {
	return map[string]any{"image": "busybox", "checkpoint": map[string]any{"enabled": enabled}}
}

func TestClassify(t *testing.T) {
	const onlinePriority = 70
	cases := []struct {
		name  string
		alloc func() *api.Allocation
		want  func(a *Alloc) // edits the expectation built from the defaults
	}{
		{
			name:  "service job is online whatever its priority",
			alloc: func() *api.Allocation { return testAlloc("service", 10) },
			want: func(a *Alloc) {
				a.JobType, a.Priority, a.Online = "service", 10, true
				a.MinHealthy = 2
			},
		},
		{
			name:  "system job is online",
			alloc: func() *api.Allocation { return testAlloc("system", 10) },
			want:  func(a *Alloc) { a.JobType, a.Priority, a.Online = "system", 10, true },
		},
		{
			name:  "batch job below the online priority is offline",
			alloc: func() *api.Allocation { return testAlloc("batch", 69) },
			want:  func(a *Alloc) { a.JobType, a.Priority = "batch", 69 },
		},
		{
			name:  "batch job at the online priority is online",
			alloc: func() *api.Allocation { return testAlloc("batch", 70) },
			want:  func(a *Alloc) { a.JobType, a.Priority, a.Online = "batch", 70, true },
		},
		{
			name:  "sysbatch job is offline",
			alloc: func() *api.Allocation { return testAlloc("sysbatch", 50) },
			want:  func(a *Alloc) { a.JobType, a.Priority = "sysbatch", 50 },
		},
		{
			name: "unset type and priority are Nomad's defaults",
			alloc: func() *api.Allocation {
				a := testAlloc("", 0)
				a.Job.Type, a.Job.Priority = nil, nil
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority, a.Online = "service", 50, true
				a.MinHealthy = 2
			},
		},
		{
			name: "allocation without its job is online",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 10)
				a.Job = nil
				return a
			},
			want: func(a *Alloc) { *a = Alloc{ID: "a1", Name: "job.web[0]", JobID: "job", Group: "web", Online: true} },
		},
		{
			name: "checkpoint block as a map",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", checkpointMap(true)))
			},
			want: func(a *Alloc) { a.JobType, a.Priority, a.Checkpoint = "batch", 50, true },
		},
		{
			name: "checkpoint block as a one-element list of maps",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", map[string]any{
					"checkpoint": []map[string]any{{"enabled": true}},
				}))
			},
			want: func(a *Alloc) { a.JobType, a.Priority, a.Checkpoint = "batch", 50, true },
		},
		{
			name: "checkpoint block as a decoded JSON list",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", map[string]any{
					"checkpoint": []any{map[string]any{"enabled": "true"}},
				}))
			},
			want: func(a *Alloc) { a.JobType, a.Priority, a.Checkpoint = "batch", 50, true },
		},
		{
			name: "checkpoint block of two elements is not understood",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", map[string]any{
					"checkpoint": []map[string]any{{"enabled": true}, {"enabled": true}},
				}))
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "checkpoint disabled",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", checkpointMap(false)))
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "no checkpoint block",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50, ferryTask("main", map[string]any{"image": "busybox"}))
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "every task must checkpoint",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50,
					ferryTask("main", checkpointMap(true)),
					ferryTask("side", checkpointMap(false)))
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "a task on another driver cannot checkpoint",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50,
					ferryTask("main", checkpointMap(true)),
					&api.Task{Name: "side", Driver: "docker", Config: checkpointMap(true)})
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "move opt-ins from job meta",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 50)
				a.Job.Meta = map[string]string{sdk.MetaRestartMove: "true", sdk.MetaCrossArch: "true"}
				return a
			},
			want: func(a *Alloc) { a.JobType, a.Priority, a.RestartMove, a.CrossArch = "batch", 50, true, true },
		},
		{
			name: "move opt-ins other than true",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 50)
				a.Job.Meta = map[string]string{sdk.MetaRestartMove: "yes", sdk.MetaCrossArch: "false"}
				return a
			},
			want: func(a *Alloc) { a.JobType, a.Priority = "batch", 50 },
		},
		{
			name: "reserved from allocated resources",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 50, &api.Task{Name: "main", Resources: &api.Resources{CPU: new(1), MemoryMB: new(1)}})
				a.AllocatedResources = &api.AllocatedResources{Tasks: map[string]*api.AllocatedTaskResources{
					"main": {Cpu: api.AllocatedCpuResources{CpuShares: 500}, Memory: api.AllocatedMemoryResources{MemoryMB: 256}},
					"side": {Cpu: api.AllocatedCpuResources{CpuShares: 100}, Memory: api.AllocatedMemoryResources{MemoryMB: 64}},
				}}
				a.TaskResources = map[string]*api.Resources{"main": {CPU: new(2), MemoryMB: new(2)}}
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority = "batch", 50
				a.Reserved = Resources{CPU: 600, MemoryMB: 320}
			},
		},
		{
			name: "reserved from the allocation's task resources",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 50, &api.Task{Name: "main", Resources: &api.Resources{CPU: new(1), MemoryMB: new(1)}})
				a.TaskResources = map[string]*api.Resources{
					"main": {CPU: new(300), MemoryMB: new(128)},
					"side": {CPU: new(100)},
				}
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority = "batch", 50
				a.Reserved = Resources{CPU: 400, MemoryMB: 128}
			},
		},
		{
			name: "reserved from the group's tasks",
			alloc: func() *api.Allocation {
				return testAlloc("batch", 50,
					&api.Task{Name: "main", Resources: &api.Resources{CPU: new(250), MemoryMB: new(100)}},
					&api.Task{Name: "side"})
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority = "batch", 50
				a.Reserved = Resources{CPU: 250, MemoryMB: 100}
			},
		},
		{
			name: "service group keeps count - migrate.max_parallel",
			alloc: func() *api.Allocation {
				a := testAlloc("service", 50)
				a.Job.TaskGroups[1].Count = new(5)
				a.Job.TaskGroups[1].Migrate = &api.MigrateStrategy{MaxParallel: new(2)}
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority, a.Online = "service", 50, true
				a.GroupCount, a.MinHealthy = 5, 3
			},
		},
		{
			name: "job-level migrate when the group has none",
			alloc: func() *api.Allocation {
				a := testAlloc("service", 50)
				a.Job.Migrate = &api.MigrateStrategy{MaxParallel: new(3)}
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority, a.Online = "service", 50, true
				a.GroupCount, a.MinHealthy = 3, 0
			},
		},
		{
			name: "min healthy never below 0",
			alloc: func() *api.Allocation {
				a := testAlloc("service", 50)
				a.Job.TaskGroups[1].Count = new(1)
				a.Job.TaskGroups[1].Migrate = &api.MigrateStrategy{MaxParallel: new(4)}
				return a
			},
			want: func(a *Alloc) {
				a.JobType, a.Priority, a.Online = "service", 50, true
				a.GroupCount, a.MinHealthy = 1, 0
			},
		},
		{
			name: "unset group count is 1",
			alloc: func() *api.Allocation {
				a := testAlloc("batch", 50)
				a.Job.TaskGroups[1].Count = nil
				return a
			},
			want: func(a *Alloc) { a.JobType, a.Priority, a.GroupCount = "batch", 50, 1 },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := Alloc{ID: "a1", Name: "job.web[0]", JobID: "job", Group: "web", GroupCount: 3}
			tc.want(&want)
			must.Eq(t, want, Classify(tc.alloc(), onlinePriority))
		})
	}
}

func TestCheckpointEnabled(t *testing.T) {
	cases := []struct {
		name   string
		config map[string]any
		want   bool
	}{
		{"nil config", nil, false},
		{"map, bool true", map[string]any{"checkpoint": map[string]any{"enabled": true}}, true},
		{"map, string true", map[string]any{"checkpoint": map[string]any{"enabled": "true"}}, true},
		{"map, enabled unset", map[string]any{"checkpoint": map[string]any{"file_locks": true}}, false},
		{"map, enabled garbage", map[string]any{"checkpoint": map[string]any{"enabled": 1}}, false},
		{"typed list", map[string]any{"checkpoint": []map[string]any{{"enabled": true}}}, true},
		{"typed list, nil element", map[string]any{"checkpoint": []map[string]any{nil}}, false},
		{"empty typed list", map[string]any{"checkpoint": []map[string]any{}}, false},
		{"generic list", map[string]any{"checkpoint": []any{map[string]any{"enabled": true}}}, true},
		{"generic list of a non-map", map[string]any{"checkpoint": []any{true}}, false},
		{"block is a bool", map[string]any{"checkpoint": true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			must.Eq(t, tc.want, checkpointEnabled(tc.config))
		})
	}
}
