package plugin

import (
	"context"
	"errors"
	"fmt"
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
	"golang.org/x/sys/unix"
)

// checkpointLazily is checkpointForMigration's lazy (post-copy) move. The
// task is dumped without its memory, which CRIU's page server (plan) then
// serves from the frozen task to the destination's lazy-pages daemon; the
// small checkpoint is pushed to the destination Nomad placed (next) as it
// is packed, and recorded ready. The task is then reported exited to Nomad, so that the replacement may
// start, while its container lives on, paused, until the destination has
// every page (serveLazily). It returns true once the task is vacated;
// false when the task should be stopped as usual (the dump failed: the
// task runs on, and the failure is reported and recorded).
func (d *Driver) checkpointLazily(ctx context.Context, conf *Config, env *environment, h *task.Handle, rec *catalog.Record, dir string, plan *lazyPlan, next *nomadapi.Allocation, logger hclog.Logger) bool {
	cfg := h.Config
	logger = logger.With("page_server", plan.pageServer)
	rec.Lazy = &catalog.LazyTransfer{PageServer: plan.pageServer}
	dest, secret := d.pushTarget(ctx, env, cfg.NodeID, next, rec, logger)
	pctx, pcancel := context.WithTimeout(ctx, recordTimeout)
	err := env.catalog.Put(pctx, rec)
	pcancel()
	if err != nil {
		plan.release()
		logger.Warn("cannot record the checkpoint in Consul; stopping without one", "error", err)
		d.emit(cfg, "Not checkpointed: "+err.Error(), nil)
		return false
	}
	var push *transfer.Push
	var sink checkpoint.Sink
	if dest != nil {
		push = transfer.StartPush(ctx, env.transfer.client, dest.Address, secret, cfg.AllocID, cfg.Name, env.transfer.limits)
		sink = push
	}
	d.emit(cfg, "Checkpointing lazily for migration: the memory follows the task from "+plan.pageServer, nil)

	// The dump's runc and CRIU serve the memory after StopTask returns:
	// they live as long as the lazy move, not as the stop.
	sctx, scancel := context.WithTimeout(d.ctx, checkpointTimeout+h.State.LazyTimeout)
	fail := func(msg, reason string) bool {
		scancel()
		plan.release()
		if push != nil {
			push.Abort(errors.New(reason))
		}
		d.emit(cfg, msg, nil)
		d.recordCheckpointFailed(ctx, env, cfg, reason, logger)
		return false
	}
	dump, err := checkpoint.CreateLazy(sctx, env.runc, h.State.ContainerID, h.State.Dir, dir, d.checkpointMeta(ctx, conf, env, h),
		checkpointOptions(h), sink, plan.pageServer, &env.transfer.criuTLS, logger)
	if errors.Is(err, checkpoint.ErrDumped) {
		// CRIU stopped serving and let go of the task, which stays
		// paused: it runs again, to be stopped normally.
		logger.Error("lazy checkpoint failed after the dump; resuming the task", "error", err)
		if rerr := env.runc.Resume(ctx, h.State.ContainerID); rerr != nil {
			logger.Warn("resume the task", "error", rerr)
		}
		return fail("Checkpoint failed after the dump, resumed, stopping normally: "+err.Error(),
			"lazy checkpoint failed after the dump: "+err.Error()+"; the task was resumed and stopped normally")
	}
	if err != nil {
		logger.Error("lazy checkpoint failed; stopping the task normally", "error", err)
		return fail("Checkpoint failed, stopping normally: "+err.Error(), "checkpoint failed: "+err.Error())
	}
	if _, err := env.catalog.Transition(ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State = catalog.StateReady
		r.Bytes, r.Files, r.DumpDuration = dump.Bytes, len(dump.Files), dump.DumpDuration
		r.ManifestSHA256 = dump.Digest
		return nil
	}); err != nil {
		// Nobody can find the checkpoint: the task runs on here, and is
		// stopped normally.
		dump.Abort()
		if rerr := env.runc.Resume(ctx, h.State.ContainerID); rerr != nil {
			logger.Warn("resume the task", "error", rerr)
		}
		return fail("Checkpoint taken but not recorded in Consul, stopping normally: "+err.Error(),
			"lazy checkpoint taken but not recorded: "+err.Error())
	}
	dumped := time.Now()
	how := "for the destination to fetch"
	if push != nil {
		how = d.finishPush(ctx, push, dump.Created, dest, logger)
	}
	d.emit(cfg, fmt.Sprintf("Checkpointed lazily for migration: %s without the task's memory; dump %s, %s; serving the memory at %s for up to %s",
		humanBytes(dump.Bytes), dump.DumpDuration.Round(time.Millisecond), how, plan.pageServer, h.State.LazyTimeout), map[string]string{
		sdk.EventBytes:      strconv.FormatInt(dump.Bytes, 10),
		sdk.EventDumpMs:     strconv.FormatInt(dump.DumpDuration.Milliseconds(), 10),
		sdk.EventTransferMs: strconv.FormatInt(time.Since(dumped).Milliseconds()+dump.PackDuration.Milliseconds(), 10),
		sdk.EventLazy:       "true",
	})
	// As the dumped task of a move by copy: killed by CRIU.
	h.Vacate(&drivers.ExitResult{ExitCode: 128 + int(unix.SIGKILL), Signal: int(unix.SIGKILL)})
	go func() {
		defer scancel()
		defer plan.release()
		d.serveLazily(sctx, env, h, dump, dir, logger)
	}()
	return true
}

// serveLazily is the source's side of a lazy move once the task was
// vacated: CRIU serves the paused task's memory until the destination
// records the outcome. Restored (every page arrived): the dump is finished,
// and CRIU removes the task. Otherwise (the restore failed or started
// fresh, CRIU failed, or checkpoint.lazy_timeout passed) the dump is
// aborted and the task killed: its memory is lost, and the destination's
// task fails if it was still receiving it. Then the checkpoint goes, with
// its record once the move is over (the reaper leaves both to this
// meanwhile); the container's removal waits in DestroyTask for its exit
// (task.Handle.Gone).
func (d *Driver) serveLazily(ctx context.Context, env *environment, h *task.Handle, dump *checkpoint.LazyDump, dir string, logger hclog.Logger) {
	cfg := h.Config
	cid := h.State.ContainerID
	key := cfg.AllocID + "/" + cfg.Name
	d.serving.Store(key, true)
	defer d.serving.Delete(key)
	wctx, cancel := context.WithTimeout(ctx, h.State.LazyTimeout)
	defer cancel()
	outcome := make(chan *catalog.Record, 1)
	go func() {
		rec, _ := env.catalog.WaitState(wctx, cfg.AllocID, cfg.Name, catalog.StateRestored, catalog.StateFailed, catalog.StateColdStart)
		outcome <- rec
	}()
	var rec *catalog.Record
	var why string
	select {
	case rec = <-outcome:
	case <-dump.Done():
		// CRIU ends on its own only when the transfer failed; the
		// destination records what that did to its task.
		why = "the page server stopped: " + errString(dump.Err())
	}
	switch {
	case rec != nil && rec.State == catalog.StateRestored:
		fctx, fcancel := context.WithTimeout(d.ctx, time.Minute)
		err := dump.Finish(fctx)
		fcancel()
		if err == nil {
			logger.Info("lazy move complete: the destination has the task's memory", "dest_node", rec.DestNodeName)
			break
		}
		logger.Warn("finish the lazy checkpoint", "error", err)
		d.killVacated(env, dump, cid, logger)
	case rec != nil:
		logger.Info("lazy move ended without the task's memory; removing the paused task", "state", rec.State, "reason", rec.Reason)
		d.killVacated(env, dump, cid, logger)
	default:
		if why == "" {
			why = fmt.Sprintf("checkpoint.lazy_timeout (%s) passed before the destination had the task's memory", h.State.LazyTimeout)
		}
		logger.Error("lazy move failed on the source; removing the paused task", "reason", why)
		d.killVacated(env, dump, cid, logger)
		// A checkpoint nobody claimed is no use without its page
		// server: the replacement, if it comes, starts fresh. One
		// claimed fails on its destination, which records why.
		if _, err := env.catalog.Transition(d.ctx, cfg.AllocID, cfg.Name, []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
			r.State, r.Reason = catalog.StateFailed, "lazy move: "+why
			return nil
		}); err != nil && !errors.As(err, new(*catalog.StateError)) {
			logger.Warn("record the lazy move's failure", "error", err)
		}
		d.emit(cfg, "Lazy move failed on the source: "+why, nil)
	}
	if rec != nil && (rec.State == catalog.StateRestored || rec.State == catalog.StateColdStart) {
		// The move is over: its checkpoint and record go, as the
		// reaper's would.
		d.removeCheckpoint(d.ctx, env, rec, logger)
		return
	}
	if err := checkpoint.Remove(dir); err != nil {
		logger.Warn("remove the lazy checkpoint", "error", err)
	}
}

// killVacated ends a lazy dump and kills its paused task.
func (d *Driver) killVacated(env *environment, dump *checkpoint.LazyDump, cid string, logger hclog.Logger) {
	dump.Abort()
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	if err := env.runc.Kill(ctx, cid, unix.SIGKILL, true); err != nil {
		logger.Warn("kill the lazily checkpointed task", "container", cid, "error", err)
	}
}

func errString(err error) string {
	if err == nil {
		return "it ended"
	}
	return err.Error()
}
