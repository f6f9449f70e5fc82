package plugin

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
	"golang.org/x/sys/unix"
)

const (
	// lazyProgressEvery is how often the destination of a lazy move reads
	// its daemon's progress and records the pages left.
	lazyProgressEvery = 2 * time.Second
	// lazyStallTimeout is how long the daemon may read no page, with
	// pages missing, before the source counts as lost: a source cut off
	// the network leaves it waiting for ever, and the task with it.
	lazyStallTimeout = time.Minute
)

// lazyRestorable checks that this node can restore the lazy checkpoint rec
// names: the page server it recorded, the transfer TLS that authenticates
// it, and the node's own lazy support.
func lazyRestorable(env *environment, rec *catalog.Record) error {
	switch {
	case rec.Lazy == nil || rec.Lazy.PageServer == "":
		return fmt.Errorf("the checkpoint of %s is lazy, and its record names no page server for its memory", shortID(rec.AllocID))
	case env.transfer == nil:
		return fmt.Errorf("the checkpoint of %s is lazy: fetching its memory needs transfer TLS (transfer { ca_file, cert_file, key_file })", shortID(rec.AllocID))
	}
	if ok, why := env.criu.lazySupport(); !ok {
		return fmt.Errorf("the checkpoint of %s is lazy, and this node cannot restore it so: %s", shortID(rec.AllocID), why)
	}
	return nil
}

// startLazyPages starts the lazy-pages daemon for the restore of from: it
// works in the restore's work directory (where the restore finds its
// socket), and fetches the memory from the source's page server over the
// transfer TLS. It outlives the driver's contexts: the restored task needs
// it until the last page, even across a restart of the driver.
func startLazyPages(conf *Config, env *environment, from *restoreSource, workDir string) (*checkpoint.LazyPages, error) {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, fmt.Errorf("lazy restore: %w", err)
	}
	return checkpoint.StartLazyPages(context.Background(), checkpoint.LazyPagesOptions{
		CriuPath:  conf.CriuPath,
		ImagesDir: checkpoint.ImagesDir(from.dir),
		WorkDir:   workDir,
		Source:    from.record.Lazy.PageServer,
		TLS:       &env.transfer.criuTLS,
	})
}

// restoredLazily records that the task runs on this node while its memory
// arrives (restoring_lazy), says so in a task event, and follows the
// daemon in the background (awaitLazyPages).
func (d *Driver) restoredLazily(ctx context.Context, env *environment, cfg *drivers.TaskConfig, rec *catalog.Record, got *obtained, logger hclog.Logger) {
	p, _ := got.lazy.Progress()
	if _, err := env.catalog.Transition(ctx, rec.AllocID, rec.Task, []catalog.State{catalog.StateRestoring}, func(r *catalog.Record) error {
		r.State = catalog.StateRestoringLazy
		if r.Lazy != nil {
			r.Lazy.Pages, r.Lazy.PagesLeft = p.Pages, max(0, p.Pages-p.Read)
		}
		return nil
	}); err != nil {
		logger.Warn("record the lazy restore", "error", err)
	}
	d.emit(cfg, fmt.Sprintf("Restored from checkpoint of %s on %s, lazily: %s %s, restored in %s; its memory arrives from %s as it runs",
		shortID(rec.AllocID), rec.SourceNodeName, humanBytes(rec.Bytes), got.how, got.restore.Round(10*time.Millisecond), rec.SourceNodeName),
		map[string]string{
			sdk.EventRestoredFrom: rec.AllocID, sdk.EventSourceNode: rec.SourceNodeName, sdk.EventRestore: string(catalog.StateRestored),
			sdk.EventReceived: got.kind, sdk.EventRestoreMs: strconv.FormatInt(got.restore.Milliseconds(), 10),
			sdk.EventFetchMs: strconv.FormatInt(got.fetch.Milliseconds(), 10), sdk.EventLazy: "true",
		})
	go d.awaitLazyPages(env, cfg, rec, got, containerID(cfg), logger)
}

// awaitLazyPages follows a lazy restore's daemon until it is done, and
// records the pages left as they arrive. Every page arrived (or the task
// exited first): the record says restored, which ends the source's part,
// and an event says how the memory came. Otherwise the task is killed
// before it can read a missing page, with an event naming the cause, and
// the record says failed: the job's restart or reschedule policy applies.
// A daemon that reads nothing for lazyStallTimeout with pages missing is
// stopped: its source is lost.
func (d *Driver) awaitLazyPages(env *environment, cfg *drivers.TaskConfig, rec *catalog.Record, got *obtained, cid string, logger hclog.Logger) {
	daemon := got.lazy
	start := time.Now().Add(-got.restore)
	type result struct {
		p   checkpoint.LazyProgress
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := daemon.Result()
		done <- result{p, err}
	}()
	tick := time.NewTicker(lazyProgressEvery)
	defer tick.Stop()
	lastRead, lastChange := int64(-1), time.Now()
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-tick.C:
		}
		p, err := daemon.Progress()
		if err != nil {
			continue
		}
		if p.Read != lastRead {
			lastRead, lastChange = p.Read, time.Now()
			d.recordPagesLeft(env, rec, p, logger)
			continue
		}
		if time.Since(lastChange) > lazyStallTimeout {
			logger.Error("lazy restore stalled: no page from the source", "for", lazyStallTimeout, "page_server", rec.Lazy.PageServer)
			daemon.Stop()
			res = <-done
			res.err = fmt.Errorf("no page came from %s (%s) for %s: the source is lost (%w)", rec.SourceNodeName, rec.Lazy.PageServer, lazyStallTimeout, res.err)
			break wait
		}
	}
	took := time.Since(start)
	state, reason := catalog.StateRestored, ""
	if res.err == nil {
		daemon.Release()
		logger.Info("lazy restore complete", "pages", res.p.Pages, "faults", res.p.Faults, "duration", took)
		d.emit(cfg, fmt.Sprintf("Memory complete: %s from %s in %s after the restore, %d pages on demand, the rest in the background",
			humanBytes(res.p.Pages*int64(os.Getpagesize())), rec.SourceNodeName, took.Round(10*time.Millisecond), res.p.OnDemand),
			map[string]string{
				sdk.EventLazy: "true", sdk.EventRestore: string(catalog.StateRestored),
				sdk.EventLazyPages: strconv.FormatInt(res.p.Pages, 10), sdk.EventLazyOnDemand: strconv.FormatInt(res.p.OnDemand, 10),
				sdk.EventLazyMs: strconv.FormatInt(took.Milliseconds(), 10),
			})
	} else {
		// Killed before the guard goes: a missing page is never read
		// as zeros.
		ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
		if err := env.runc.Kill(ctx, cid, unix.SIGKILL, true); err != nil {
			logger.Warn("kill the task missing its memory", "error", err)
		}
		cancel()
		daemon.Release()
		state, reason = catalog.StateFailed, "lazy restore: the task's memory did not all arrive: "+res.err.Error()
		logger.Error("lazy restore failed; task killed", "error", res.err)
		d.emit(cfg, fmt.Sprintf("Memory lost: %v; the task was killed with %d of %d pages not received (its restart or reschedule policy applies)",
			res.err, max(0, res.p.Pages-res.p.Read), res.p.Pages),
			map[string]string{sdk.EventLazy: "true", sdk.EventRestore: string(catalog.StateFailed)})
	}
	if _, err := env.catalog.Transition(d.ctx, rec.AllocID, rec.Task, []catalog.State{catalog.StateRestoringLazy}, func(r *catalog.Record) error {
		r.State, r.Reason = state, reason
		if r.Lazy != nil {
			r.Lazy.PagesLeft = 0
			if res.err != nil {
				r.Lazy.PagesLeft = max(0, res.p.Pages-res.p.Read)
			}
		}
		return nil
	}); err != nil {
		logger.Warn("record the lazy restore's outcome", "state", state, "error", err)
	}
	if got.received {
		if err := checkpoint.Remove(got.dir); err != nil {
			logger.Warn("remove received checkpoint", "error", err)
		}
	}
}

// recordPagesLeft records how many pages the lazy restore still lacks.
func (d *Driver) recordPagesLeft(env *environment, rec *catalog.Record, p checkpoint.LazyProgress, logger hclog.Logger) {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	if _, err := env.catalog.Transition(ctx, rec.AllocID, rec.Task, []catalog.State{catalog.StateRestoringLazy}, func(r *catalog.Record) error {
		if r.Lazy != nil {
			r.Lazy.Pages, r.Lazy.PagesLeft = p.Pages, max(0, p.Pages-p.Read)
		}
		return nil
	}); err != nil {
		logger.Debug("record the pages left", "error", err)
	}
}
