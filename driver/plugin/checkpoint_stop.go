package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/plugins/drivers"
)

const (
	// checkpointTimeout bounds one dump; the task's kill_timeout should be
	// longer.
	checkpointTimeout = 10 * time.Minute
	// pushFinishTimeout bounds how long the source waits for the
	// destination to confirm a push once the dump is over; past it the
	// destination fetches what it lacks.
	pushFinishTimeout = 2 * time.Minute
	// recordTimeout bounds the retries of the first record of a move,
	// before the dump. Once the task is dumped its record is retried
	// until checkpointTimeout: the checkpoint is the task's state.
	recordTimeout = time.Minute
)

// checkpointForMigration checkpoints a task whose allocation migrates and
// records the checkpoint in the catalogue. It returns true when the task was
// checkpointed, and has therefore exited; false when the task should be
// stopped as usual (not migrating, or the dump failed: the task is still
// running then, and the failure is reported).
//
// When Nomad has placed the replacement already, the checkpoint is pushed
// to its node while CRIU dumps it; otherwise the destination fetches it
// later from this node.
func (d *Driver) checkpointForMigration(conf *Config, env *environment, h *task.Handle) bool {
	if !h.State.Checkpoint {
		return false
	}
	cfg := h.Config
	logger := d.logger.With("task", cfg.Name, "alloc_id", cfg.AllocID)
	ctx, cancel := context.WithTimeout(d.ctx, checkpointTimeout)
	defer cancel()

	// A plain job stop or purge is not a migration: only a node drain,
	// `nomad alloc stop` or `ferry-companion migrate` set Migrate.
	qctx, qcancel := context.WithTimeout(ctx, 15*time.Second)
	alloc, _, err := env.nomad.Allocations().Info(cfg.AllocID, (&nomadapi.QueryOptions{}).WithContext(qctx))
	qcancel()
	if err != nil {
		logger.Warn("cannot tell whether the allocation migrates; stopping without a checkpoint", "error", err)
		d.emit(cfg, fmt.Sprintf("Not checkpointed: read allocation %s from Nomad: %v", cfg.AllocID, err), nil)
		return false
	}
	if !alloc.DesiredTransition.ShouldMigrate() {
		return false
	}
	// A periodic checkpoint under way ends first.
	defer h.LockDump()()
	dir, err := env.writeDir(cfg.AllocID, cfg.Name)
	if err != nil {
		d.emit(cfg, "Not checkpointed: "+err.Error(), nil)
		return false
	}

	network, err := networkOf(cfg)
	if err != nil {
		logger.Warn("network configuration incomplete in the checkpoint record", "error", err)
	}
	reap := conf.GC.Checkpoints.reap.ReapPolicy
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
		Shared:         env.shared,
		Network:        network,
		Reap:           &reap,
	}
	next := d.replacementOf(ctx, env, alloc, logger)
	if h.State.Lazy {
		plan, why := d.planLazy(ctx, conf, env, cfg.NodeID, next)
		if plan != nil {
			return d.checkpointLazily(ctx, conf, env, h, rec, dir, plan, next, logger)
		}
		d.emit(cfg, "Moving by copy, not lazily: "+why, nil)
	}
	dest, secret := d.pushTarget(ctx, env, cfg.NodeID, next, rec, logger)
	// Consul unreachable for a while is retried, up to recordTimeout: the
	// task still runs and Nomad waits for it to stop.
	pctx, pcancel := context.WithTimeout(ctx, recordTimeout)
	err = env.catalog.Put(pctx, rec)
	pcancel()
	if err != nil {
		logger.Warn("cannot record the checkpoint in Consul; stopping without one", "error", err)
		d.emit(cfg, "Not checkpointed: "+err.Error(), nil)
		return false
	}
	var push *transfer.Push
	msg := "Checkpointing for migration"
	if dest != nil {
		push = transfer.StartPush(ctx, env.transfer.client, dest.Address, secret, cfg.AllocID, cfg.Name, env.transfer.limits)
		msg += ", streaming to " + dest.NodeName
	}
	d.emit(cfg, msg, nil)

	var sink checkpoint.Sink
	if push != nil {
		sink = push
	}
	// Should the task be restored in place, its log FIFOs must not have
	// lost every writer meanwhile, or Nomad stops reading them.
	defer holdLogs(cfg)()
	created, err := checkpoint.Create(ctx, env.runc, h.State.ContainerID, h.State.Dir, dir, d.checkpointMeta(ctx, conf, env, h),
		checkpointOptions(h), sink, logger)
	if err != nil {
		if push != nil {
			push.Abort(err)
		}
		if errors.Is(err, checkpoint.ErrDumped) {
			return d.dumpedNotCheckpointed(ctx, conf, env, h, dir, err, logger)
		}
		logger.Error("checkpoint failed; stopping the task normally", "error", err)
		d.emit(cfg, "Checkpoint failed, stopping normally: "+err.Error(), nil)
		d.recordCheckpointFailed(ctx, env, cfg, "checkpoint failed: "+err.Error(), logger)
		return false
	}
	dumped := time.Now()
	// The record names the manifest's digest before the manifest goes
	// out, so that the destination checks it before reading it.
	if _, err := env.catalog.Transition(ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State = catalog.StateReady
		r.Bytes, r.Files, r.DumpDuration = created.Bytes, len(created.Files), created.DumpDuration
		r.ManifestSHA256 = created.Digest
		return nil
	}); err != nil {
		// The container is gone but nobody can find its checkpoint: the
		// destination will start the task fresh. The checkpoint stays on disk.
		if push != nil {
			push.Abort(err)
		}
		logger.Error("checkpoint taken but not recorded", "dir", dir, "error", err)
		d.emit(cfg, "Checkpoint taken but not recorded in Consul: "+err.Error(), nil)
		d.keepLater(env, cfg, dir, logger)
		return d.awaitExit(h, logger)
	}
	details := map[string]string{
		sdk.EventBytes:  strconv.FormatInt(created.Bytes, 10),
		sdk.EventDumpMs: strconv.FormatInt(created.DumpDuration.Milliseconds(), 10),
	}
	how := "for the destination to fetch"
	if push != nil {
		how = d.finishPush(ctx, push, created, dest, logger)
	}
	details[sdk.EventTransferMs] = strconv.FormatInt(time.Since(dumped).Milliseconds()+created.PackDuration.Milliseconds(), 10)
	d.emit(cfg, fmt.Sprintf("Checkpointed for migration: %s; dump %s, %s", humanBytes(created.Bytes),
		created.DumpDuration.Round(time.Millisecond), how), details)
	d.keepLater(env, cfg, dir, logger)
	return d.awaitExit(h, logger)
}

// dumpedNotCheckpointed handles a checkpoint that failed after CRIU's dump,
// the task gone but its memory whole in CRIU's images: the task is restored
// in place and false returned, so that StopTask stops it normally (by its
// kill_signal, as without a checkpoint). The images stay in dir, and the
// record says failed and why: the destination starts the task fresh. If the
// restore fails too, true: there is nothing left to stop.
func (d *Driver) dumpedNotCheckpointed(ctx context.Context, conf *Config, env *environment, h *task.Handle, dir string, dumpErr error, logger hclog.Logger) bool {
	cfg := h.Config
	logger.Error("checkpoint failed after the dump; restoring the task in place", "error", dumpErr, "images", checkpoint.ImagesDir(dir))
	if _, err := d.restoreInPlace(conf, env, h, dir, logger); err != nil {
		reason := fmt.Sprintf("checkpoint failed after the dump (%v), and so did restoring the task in place (%v); CRIU's images are kept in %s", dumpErr, err, checkpoint.ImagesDir(dir))
		logger.Error("task lost: restore in place failed", "error", err)
		d.emit(cfg, "Checkpoint failed: "+reason, nil)
		d.recordCheckpointFailed(ctx, env, cfg, reason, logger)
		return true
	}
	reason := fmt.Sprintf("checkpoint failed after the dump (%v); the task was restored in place and stopped normally; CRIU's images are kept in %s", dumpErr, checkpoint.ImagesDir(dir))
	d.emit(cfg, "Checkpoint failed after the dump, restored in place, stopping normally: "+dumpErr.Error(), nil)
	d.recordCheckpointFailed(ctx, env, cfg, reason, logger)
	return false
}

// recordCheckpointFailed records that the move's checkpoint failed, so that
// the destination starts the task fresh at once rather than waiting.
func (d *Driver) recordCheckpointFailed(ctx context.Context, env *environment, cfg *drivers.TaskConfig, reason string, logger hclog.Logger) {
	if _, err := env.catalog.Transition(ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State, r.Reason = catalog.StateFailed, reason
		return nil
	}); err != nil {
		logger.Warn("record checkpoint failure", "error", err)
	}
}

// checkpointMeta is what a checkpoint of h's task records of where and
// how it was taken.
func (d *Driver) checkpointMeta(ctx context.Context, conf *Config, env *environment, h *task.Handle) checkpoint.Meta {
	runcVersion, _ := env.runc.Version(ctx)
	criuVersion, _, _ := env.criu.get(ctx, conf.CriuPath)
	cfg := h.Config
	return checkpoint.Meta{
		AllocID:     cfg.AllocID,
		Task:        cfg.Name,
		NodeID:      cfg.NodeID,
		NodeName:    cfg.NodeName,
		ImageRef:    h.State.ImageRef,
		ImageDigest: h.State.ImageDigest,
		Platform:    h.State.Platform,
		RuncVersion: runcVersion,
		CriuVersion: criuVersion,
	}
}

// checkpointOptions are the CRIU options h's task asked for.
func checkpointOptions(h *task.Handle) checkpoint.Options {
	return checkpoint.Options{TCPEstablished: h.State.TCPEstablished, FileLocks: h.State.FileLocks}
}

// replacementOf reads the allocation Nomad placed to replace alloc; nil
// when it has placed none yet, or it cannot be read (logged).
func (d *Driver) replacementOf(ctx context.Context, env *environment, alloc *nomadapi.Allocation, logger hclog.Logger) *nomadapi.Allocation {
	if alloc.NextAllocation == "" {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	next, _, err := env.nomad.Allocations().Info(alloc.NextAllocation, (&nomadapi.QueryOptions{Namespace: alloc.Namespace}).WithContext(qctx))
	if err != nil {
		logger.Warn("cannot read the replacement allocation", "next_alloc_id", alloc.NextAllocation, "error", err)
		return nil
	}
	return next
}

// pushTarget decides whether the checkpoint is pushed while it is dumped:
// when Nomad placed the replacement (next) already on another node whose
// driver records a transfer endpoint, and the checkpoint is not on shared
// storage. It then grants that node the push in rec, and returns its
// endpoint and the push's secret; nil when the destination will fetch.
func (d *Driver) pushTarget(ctx context.Context, env *environment, self string, next *nomadapi.Allocation, rec *catalog.Record, logger hclog.Logger) (*catalog.Endpoint, string) {
	if env.transfer == nil || rec.Shared || next == nil || next.NodeID == self {
		return nil, ""
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ep, err := endpointOf(qctx, env, next.NodeID, next.NodeName)
	if err != nil {
		logger.Warn("cannot push the checkpoint; the destination will fetch it", "error", err)
		return nil, ""
	}
	if ep.NodeName == "" {
		ep.NodeName = next.NodeName
	}
	secret, sha := transfer.NewSecret()
	rec.Push = &catalog.Grant{NodeID: next.NodeID, SHA256: sha, Expires: time.Now().Add(checkpointTimeout).UTC()}
	return ep, secret
}

// finishPush sends the manifest and waits for the destination to have
// checked the whole checkpoint. It returns how the checkpoint went, for
// the task event.
func (d *Driver) finishPush(ctx context.Context, push *transfer.Push, created *checkpoint.Created, dest *catalog.Endpoint, logger hclog.Logger) string {
	if created.SinkErr != nil {
		push.Abort(created.SinkErr)
		return fmt.Sprintf("streaming to %s failed (%v): the destination fetches it", dest.NodeName, created.SinkErr)
	}
	fctx, cancel := context.WithTimeout(ctx, pushFinishTimeout)
	defer cancel()
	start := time.Now()
	if _, err := push.Finish(fctx, created.Raw); err != nil {
		logger.Warn("push not confirmed; the destination will fetch what it lacks", "error", err)
		return fmt.Sprintf("streaming to %s failed (%v): the destination fetches it", dest.NodeName, err)
	}
	return fmt.Sprintf("streamed to %s (%s after the dump)", dest.NodeName, (created.PackDuration + time.Since(start)).Round(time.Millisecond))
}

// keepDelay is how long a checkpoint may stay where the move wrote it: a
// move is over by then, one way or the other.
const keepDelay = 30 * time.Second

// keepLater keeps a checkpoint its move did not take: one whose task was
// not restored within keepDelay (the destination fetches it later, or its
// restore failed) is moved from state_dir to data_dir (a shared one
// synced), made durable. A move never waits for the disk, nor does a
// checkpoint's write-back slow Nomad's own writes while the allocation is
// handed over; a checkpoint restored meanwhile is simply removed.
func (d *Driver) keepLater(env *environment, cfg *drivers.TaskConfig, dir string, logger hclog.Logger) {
	go func() {
		ctx, cancel := context.WithTimeout(d.ctx, keepDelay)
		defer cancel()
		rec, err := env.catalog.WaitState(ctx, cfg.AllocID, cfg.Name, catalog.StateRestored, catalog.StateColdStart)
		if (err == nil && rec != nil) || d.ctx.Err() != nil {
			return
		}
		if env.shared {
			err = checkpoint.Sync(dir)
		} else {
			var kept string
			if kept, err = checkpoint.Dir(env.checkpoints, cfg.AllocID, cfg.Name); err == nil {
				err = checkpoint.Move(dir, kept)
			}
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			logger.Warn("keep checkpoint", "error", err)
		}
	}()
}

// awaitExit waits for the dumped container's shim to report it gone.
func (d *Driver) awaitExit(h *task.Handle, logger hclog.Logger) bool {
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
