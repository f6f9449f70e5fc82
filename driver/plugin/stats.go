package plugin

import (
	"context"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/hashicorp/nomad/client/lib/cpustats"
	"github.com/hashicorp/nomad/plugins/drivers"
)

var (
	measuredMemory = []string{"RSS", "Cache", "Swap", "Usage", "Max Usage"}
	measuredCPU    = []string{"System Mode", "User Mode", "Throttled Periods", "Throttled Time", "Percent"}
)

// TaskStats samples the container's cgroup every interval until ctx ends or
// the task exits.
func (d *Driver) TaskStats(ctx context.Context, taskID string, interval time.Duration) (<-chan *drivers.TaskResourceUsage, error) {
	h, _, env, err := d.lookup(taskID)
	if err != nil {
		return nil, err
	}

	ch := make(chan *drivers.TaskResourceUsage)
	go func() {
		defer close(ch)
		s := newStatsSampler(env.compute)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-h.Done():
				return
			case <-timer.C:
				timer.Reset(interval)
			}
			raw, err := env.runc.Stats(ctx, h.State.ContainerID)
			if err != nil {
				if h.Running() && ctx.Err() == nil {
					d.logger.Debug("sample stats", "container", h.State.ContainerID, "error", err)
				}
				continue
			}
			select {
			case ch <- s.usage(raw):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// statsSampler turns cumulative CPU times into percentages between samples.
type statsSampler struct {
	total, user, system *cpustats.Tracker
}

func newStatsSampler(c cpustats.Compute) *statsSampler {
	return &statsSampler{total: cpustats.New(c), user: cpustats.New(c), system: cpustats.New(c)}
}

func (s *statsSampler) usage(r *runc.Stats) *drivers.TaskResourceUsage {
	percent := s.total.Percent(float64(r.CPU.TotalNs))
	cpu := &drivers.CpuStats{
		SystemMode:       s.system.Percent(float64(r.CPU.KernelNs)),
		UserMode:         s.user.Percent(float64(r.CPU.UserNs)),
		Percent:          percent,
		TotalTicks:       s.total.TicksConsumed(percent),
		ThrottledPeriods: r.CPU.ThrottledPeriods,
		ThrottledTime:    r.CPU.ThrottledTimeNs,
		Measured:         measuredCPU,
	}
	mem := &drivers.MemoryStats{
		RSS:      r.Memory.RSS,
		Cache:    r.Memory.Cache,
		Swap:     r.Memory.Swap,
		Usage:    r.Memory.Usage,
		MaxUsage: r.Memory.MaxUsage,
		Measured: measuredMemory,
	}
	return &drivers.TaskResourceUsage{
		ResourceUsage: &drivers.ResourceUsage{CpuStats: cpu, MemoryStats: mem},
		Timestamp:     time.Now().UTC().UnixNano(),
	}
}
