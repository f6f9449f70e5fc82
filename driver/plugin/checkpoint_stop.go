package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/ferry-nomad/ferry/driver/transfer"
	nomadapi "github.com/hashicorp/nomad/api"
)

// checkpointTimeout bounds one dump; the task's kill_timeout should be longer.
const checkpointTimeout = 10 * time.Minute

// migrating reports whether Nomad is moving the allocation elsewhere (node
// drain, `nomad alloc stop`, `ferry-companion migrate`): only then is a task
// checkpointed. A plain job stop or purge is not a migration.
func (d *Driver) migrating(ctx context.Context, env *environment, allocID string) (bool, error) {
	a, _, err := env.nomad.Allocations().Info(allocID, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read allocation %s from Nomad: %w", allocID, err)
	}
	return a.DesiredTransition.ShouldMigrate(), nil
}

// checkpointForMigration checkpoints a task whose allocation migrates and
// records the checkpoint in the catalogue. It returns true when the task was
// checkpointed, and has therefore exited; false when the task should be
// stopped as usual (not migrating, or the dump failed: the task is still
// running then, and the failure is reported).
func (d *Driver) checkpointForMigration(conf *Config, env *environment, h *task.Handle) bool {
	if !h.State.Checkpoint {
		return false
	}
	cfg := h.Config
	logger := d.logger.With("task", cfg.Name, "alloc", cfg.AllocID)
	ctx, cancel := context.WithTimeout(d.ctx, checkpointTimeout)
	defer cancel()

	qctx, qcancel := context.WithTimeout(ctx, 15*time.Second)
	migrating, err := d.migrating(qctx, env, cfg.AllocID)
	qcancel()
	if err != nil {
		logger.Warn("cannot tell whether the allocation migrates; stopping without a checkpoint", "error", err)
		d.emit(cfg, "Not checkpointed: "+err.Error(), nil)
		return false
	}
	if !migrating {
		return false
	}

	network, err := networkOf(cfg)
	if err != nil {
		logger.Warn("network configuration incomplete in the checkpoint record", "error", err)
	}
	dir := transfer.CheckpointDir(env.checkpoints, cfg.AllocID, cfg.Name)
	rec := &catalog.Record{
		AllocID:        cfg.AllocID,
		Task:           cfg.Name,
		JobID:          cfg.JobID,
		Namespace:      cfg.Namespace,
		SourceNodeID:   cfg.NodeID,
		SourceNodeName: cfg.NodeName,
		State:          catalog.StateCheckpointing,
		ImageRef:       h.State.ImageRef,
		ImageDigest:    h.State.ImageDigest,
		Platform:       h.State.Platform,
		CheckpointDir:  dir,
		Shared:         conf.CheckpointDir != "",
		Network:        network,
	}
	if err := env.catalog.Put(ctx, rec); err != nil {
		logger.Warn("cannot record the checkpoint in Consul; stopping without one", "error", err)
		d.emit(cfg, "Not checkpointed: "+err.Error(), nil)
		return false
	}
	d.emit(cfg, "Checkpointing for migration", nil)

	runcVersion, _ := env.runc.Version(ctx)
	criuVersion, _, _ := env.criu.get(ctx, conf.CriuPath)
	m, err := checkpoint.Create(ctx, env.runc, h.State.ContainerID, h.State.Dir, dir, checkpoint.Meta{
		AllocID:     cfg.AllocID,
		Task:        cfg.Name,
		NodeID:      cfg.NodeID,
		NodeName:    cfg.NodeName,
		ImageRef:    h.State.ImageRef,
		ImageDigest: h.State.ImageDigest,
		Platform:    h.State.Platform,
		RuncVersion: runcVersion,
		CriuVersion: criuVersion,
	}, checkpoint.Options{TCPEstablished: h.State.TCPEstablished, FileLocks: h.State.FileLocks}, logger)
	if err != nil {
		logger.Error("checkpoint failed; stopping the task normally", "error", err)
		d.emit(cfg, "Checkpoint failed, stopping normally: "+err.Error(), nil)
		if _, terr := env.catalog.Transition(ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
			r.State, r.Reason = catalog.StateFailed, "checkpoint failed: "+err.Error()
			return nil
		}); terr != nil {
			logger.Warn("record checkpoint failure", "error", terr)
		}
		return false
	}
	if _, err := env.catalog.Transition(ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State = catalog.StateReady
		r.Bytes, r.Files, r.DumpDuration = m.Bytes, len(m.Files), m.DumpDuration
		return nil
	}); err != nil {
		// The container is gone but nobody can find its checkpoint: the
		// destination will start the task fresh. The checkpoint stays on disk.
		logger.Error("checkpoint taken but not recorded", "dir", dir, "error", err)
		d.emit(cfg, "Checkpoint taken but not recorded in Consul: "+err.Error(), nil)
	} else {
		d.emit(cfg, fmt.Sprintf("Checkpointed for migration: %s in %s", humanBytes(m.Bytes), m.DumpDuration.Round(time.Millisecond)), map[string]string{
			"checkpoint_bytes": fmt.Sprint(m.Bytes),
		})
	}
	select {
	case <-h.Done():
	case <-time.After(30 * time.Second):
		logger.Warn("container still reported running after its checkpoint")
	}
	return true
}

func humanBytes(n int64) string {
	const mib = 1 << 20
	if n >= mib {
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/1024)
}
