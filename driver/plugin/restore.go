package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-version"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// restoreSource is a verified checkpoint ready to be restored.
type restoreSource struct {
	dir     string
	record  *catalog.Record
	options runc.RestoreOptions
}

// errNoCheckpoint means the task starts fresh: there is no checkpoint to
// restore, and that is no failure.
var errNoCheckpoint = errors.New("no checkpoint")

// restore starts the task from the checkpoint of the allocation it replaces.
// restored is false when the task should start fresh instead: there is no
// checkpoint, or restoring failed and the task asked for a cold start (a task
// event says why). An error means the task asked to fail instead.
func (d *Driver) restore(cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest, logger hclog.Logger) (*drivers.TaskHandle, bool, error) {
	ctx, cancel := context.WithTimeout(d.ctx, req.restoreWait+checkpointTimeout)
	defer cancel()

	rec, err := d.awaitCheckpoint(ctx, env, cfg, req.restoreWait)
	if errors.Is(err, errNoCheckpoint) {
		logger.Debug("starting fresh", "reason", err)
		return nil, false, nil
	}
	var handle *drivers.TaskHandle
	if err == nil {
		start := time.Now()
		handle, err = d.restoreFrom(ctx, cfg, conf, env, req, rec, logger)
		if err == nil {
			d.finishRestore(ctx, env, cfg, rec, catalog.StateRestored, "", logger)
			d.emit(cfg, fmt.Sprintf("Restored from checkpoint of %s on %s: %s in %s",
				shortID(rec.AllocID), rec.SourceNodeName, humanBytes(rec.Bytes), time.Since(start).Round(10*time.Millisecond)),
				map[string]string{"restored_from": rec.AllocID, "source_node": rec.SourceNodeName, catalog.EventRestore: string(catalog.StateRestored)})
			return handle, true, nil
		}
		var cross *crossArchError
		if errors.As(err, &cross) {
			// Expected, not a failure: the task starts fresh from the image
			// for this node, without the rootfs changes (they may hold
			// binaries of the other architecture).
			d.finishRestore(ctx, env, cfg, rec, catalog.StateColdStart, cross.Error(), logger)
			d.emit(cfg, fmt.Sprintf("Moved across architectures (%s to %s): memory cannot cross, starting fresh from the image for %s", cross.from, cross.to, cross.to),
				map[string]string{"restored_from": rec.AllocID, "cold_start": "cross_arch", catalog.EventRestore: string(catalog.StateColdStart)})
			return nil, false, nil
		}
		d.finishRestore(ctx, env, cfg, rec, catalog.StateFailed, err.Error(), logger)
	}
	logger.Warn("restore failed", "error", err)
	failed := map[string]string{catalog.EventRestore: string(catalog.StateFailed)}
	if req.Checkpoint.OnRestoreFailure == restoreFailureFail {
		d.emit(cfg, "Restore failed: "+err.Error(), failed)
		return nil, false, fmt.Errorf("restore from checkpoint: %w (checkpoint.on_restore_failure = \"fail\")", err)
	}
	d.emit(cfg, "Restore failed, starting fresh: "+err.Error(), failed)
	return nil, false, nil
}

// awaitCheckpoint finds the checkpoint record of the allocation cfg replaces
// and waits, at most wait, for it to be ready; then claims it for this
// allocation so no other can restore it.
func (d *Driver) awaitCheckpoint(ctx context.Context, env *environment, cfg *drivers.TaskConfig, wait time.Duration) (*catalog.Record, error) {
	q := (&nomadapi.QueryOptions{}).WithContext(ctx)
	a, _, err := env.nomad.Allocations().Info(cfg.AllocID, q)
	if err != nil {
		return nil, fmt.Errorf("read allocation %s from Nomad: %w", cfg.AllocID, err)
	}
	prevID := a.PreviousAllocation
	if prevID == "" {
		// Nomad places the replacement of a stopped batch allocation
		// without linking the two: find the migrating allocation it replaces.
		if prevID, err = d.migratingPredecessor(ctx, env, a); err != nil {
			return nil, err
		}
	}
	if prevID == "" {
		return nil, fmt.Errorf("%w: allocation replaces none", errNoCheckpoint)
	}
	rec, err := env.catalog.Get(ctx, prevID, cfg.Name)
	if errors.Is(err, catalog.ErrNotFound) {
		// No record yet: one comes only if the previous allocation migrates.
		prev, _, perr := env.nomad.Allocations().Info(prevID, q)
		if perr != nil {
			return nil, fmt.Errorf("read previous allocation %s from Nomad: %w", prevID, perr)
		}
		if !prev.DesiredTransition.ShouldMigrate() {
			return nil, fmt.Errorf("%w: previous allocation %s did not migrate", errNoCheckpoint, shortID(prevID))
		}
		// The source records a checkpoint before its task exits.
		if prev.ClientTerminalStatus() {
			return nil, fmt.Errorf("%w: previous allocation %s stopped without one", errNoCheckpoint, shortID(prevID))
		}
	} else if err != nil {
		return nil, err
	}
	d.emit(cfg, fmt.Sprintf("Waiting for the checkpoint of %s", shortID(prevID)), nil)
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	rec, err = env.catalog.WaitState(wctx, prevID, cfg.Name, catalog.StateReady, catalog.StateFailed)
	switch {
	case err != nil && rec == nil:
		return nil, fmt.Errorf("%w: none recorded for %s within checkpoint.restore_wait (%s)", errNoCheckpoint, shortID(prevID), wait)
	case err != nil:
		return nil, fmt.Errorf("checkpoint of %s not ready within checkpoint.restore_wait (%s): state %s", shortID(prevID), wait, rec.State)
	case rec.State == catalog.StateFailed:
		return nil, fmt.Errorf("%w: the source could not checkpoint: %s", errNoCheckpoint, rec.Reason)
	}
	return env.catalog.Transition(ctx, prevID, cfg.Name, []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		r.State = catalog.StateRestoring
		r.DestAllocID, r.DestNodeID, r.DestNodeName = cfg.AllocID, cfg.NodeID, cfg.NodeName
		return nil
	})
}

// migratingPredecessor finds the allocation a replaces when Nomad did not
// record it: the latest earlier allocation with the same name (job, group
// and index) that Nomad is migrating and that has no other replacement.
func (d *Driver) migratingPredecessor(ctx context.Context, env *environment, a *nomadapi.Allocation) (string, error) {
	q := (&nomadapi.QueryOptions{Namespace: a.Namespace}).WithContext(ctx)
	stubs, _, err := env.nomad.Jobs().Allocations(a.JobID, true, q)
	if err != nil {
		return "", fmt.Errorf("list allocations of job %s: %w", a.JobID, err)
	}
	var best *nomadapi.AllocationListStub
	for _, s := range stubs {
		if s.ID == a.ID || s.Name != a.Name || s.CreateIndex >= a.CreateIndex {
			continue
		}
		if s.NextAllocation != "" && s.NextAllocation != a.ID {
			continue
		}
		if time.Since(time.Unix(0, s.ModifyTime)) > time.Hour {
			continue
		}
		if best == nil || s.CreateIndex > best.CreateIndex {
			best = s
		}
	}
	if best == nil {
		return "", nil
	}
	prev, _, err := env.nomad.Allocations().Info(best.ID, q)
	if err != nil {
		return "", fmt.Errorf("read allocation %s: %w", best.ID, err)
	}
	if !prev.DesiredTransition.ShouldMigrate() {
		return "", nil
	}
	return prev.ID, nil
}

// restoreFrom fetches and verifies the checkpoint, then restores it.
func (d *Driver) restoreFrom(ctx context.Context, cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest, rec *catalog.Record, logger hclog.Logger) (*drivers.TaskHandle, error) {
	platform := env.platform
	if !sameArch(rec.Platform, platform) {
		return nil, &crossArchError{from: rec.Platform, to: platform}
	}

	dir := rec.CheckpointDir
	if !rec.Shared {
		dir = filepath.Join(env.layout.incoming(), containerID(cfg))
		defer os.RemoveAll(dir)
		agent, err := env.catalog.GetAgent(ctx, rec.SourceNodeID)
		if err != nil {
			return nil, fmt.Errorf("find the ferry-companion agent of %s (is the companion job running there?): %w", rec.SourceNodeName, err)
		}
		addr := agent.Address
		d.emit(cfg, fmt.Sprintf("Fetching checkpoint of %s from %s", shortID(rec.AllocID), rec.SourceNodeName), nil)
		if _, err := transfer.Fetch(ctx, env.http, addr, conf.Companion.Token, rec.AllocID, rec.Task, dir, logger); err != nil {
			return nil, fmt.Errorf("fetch checkpoint from %s: %w", rec.SourceNodeName, err)
		}
	}
	m, err := checkpoint.Verify(dir)
	if err != nil {
		return nil, err
	}
	if err := d.checkVersions(ctx, conf, env, m); err != nil {
		return nil, err
	}
	if m.ImageDigest != rec.ImageDigest {
		return nil, fmt.Errorf("checkpoint manifest names image %s, the record %s", m.ImageDigest, rec.ImageDigest)
	}
	// The image the checkpoint was taken from, even if the tag moved since.
	pinned := *req
	if req.ref.Remote != nil {
		pinned.ref.Remote = req.ref.Remote.Context().Digest(m.ImageDigest)
	}
	img, err := d.pull(cfg, conf, env, &pinned)
	if err != nil {
		return nil, err
	}
	if img.Digest.String() != m.ImageDigest {
		return nil, fmt.Errorf("image %s is now %s, the checkpoint was taken from %s", req.ref, img.Digest, m.ImageDigest)
	}
	opts := runc.RestoreOptions{TCPEstablished: m.Options.TCPEstablished, FileLocks: m.Options.FileLocks}
	if m.Options.TCPEstablished && !sameAddresses(rec, cfg) {
		// Connections cannot follow to another address: restore them
		// closed. CRIU binds each socket back to its old address first,
		// which this namespace lacks unless non-local binds are allowed.
		opts.TCPEstablished, opts.TCPClose = false, true
		undo, err := allowNonlocalBind(cfg)
		if err != nil {
			return nil, fmt.Errorf("restore connections closed: %w", err)
		}
		defer undo()
	}
	return d.launch(cfg, conf, env, req, img, &restoreSource{dir: dir, record: rec, options: opts}, logger)
}

// checkVersions refuses a checkpoint this node's runc and CRIU may not
// restore: CRIU must be at least the version that dumped it, and runc of the
// same minor release.
func (d *Driver) checkVersions(ctx context.Context, conf *Config, env *environment, m *checkpoint.Manifest) error {
	criuVersion, ok, reason := env.criu.get(ctx, conf.CriuPath)
	if !ok {
		return fmt.Errorf("this node cannot restore checkpoints: %s", reason)
	}
	if older(criuVersion, m.CriuVersion) {
		return fmt.Errorf("checkpoint was dumped by CRIU %s, this node has CRIU %s: upgrade CRIU here", m.CriuVersion, criuVersion)
	}
	runcVersion, err := env.runc.Version(ctx)
	if err != nil {
		return fmt.Errorf("runc: %w", err)
	}
	if minor(runcVersion) != minor(m.RuncVersion) {
		return fmt.Errorf("checkpoint was taken with runc %s, this node has runc %s", m.RuncVersion, runcVersion)
	}
	return nil
}

// older reports whether version a is older than b; versions that do not
// parse are not compared.
func older(a, b string) bool {
	va, errA := version.NewVersion(a)
	vb, errB := version.NewVersion(b)
	return errA == nil && errB == nil && va.LessThan(vb)
}

// minor is "major.minor" of a version, or the version itself.
func minor(v string) string {
	p, err := version.NewVersion(v)
	if err != nil {
		return v
	}
	seg := p.Segments()
	return fmt.Sprintf("%d.%d", seg[0], seg[1])
}

// crossArchError is a checkpoint taken on another CPU architecture.
type crossArchError struct{ from, to string }

func (e *crossArchError) Error() string {
	return fmt.Sprintf("checkpoint taken on %s cannot be restored on %s: cold cross-architecture start", e.from, e.to)
}

// sameArch reports whether two platforms have the same OS and architecture.
func sameArch(a, b string) bool {
	pa, errA := parsePlatform(a)
	pb, errB := parsePlatform(b)
	return errA == nil && errB == nil && pa.OS == pb.OS && pa.Architecture == pb.Architecture
}

// finishRestore records the outcome of a restore.
func (d *Driver) finishRestore(ctx context.Context, env *environment, cfg *drivers.TaskConfig, rec *catalog.Record, state catalog.State, reason string, logger hclog.Logger) {
	_, err := env.catalog.Transition(ctx, rec.AllocID, rec.Task, []catalog.State{catalog.StateRestoring}, func(r *catalog.Record) error {
		r.State, r.Reason = state, reason
		return nil
	})
	if err != nil {
		logger.Warn("record restore outcome", "state", state, "error", err)
	}
}

// sameAddresses reports whether the task's new network has the addresses the
// checkpointed one had. With host networking they are the node's.
func sameAddresses(rec *catalog.Record, cfg *drivers.TaskConfig) bool {
	now, err := networkOf(cfg)
	if err != nil || rec.Network.Mode != now.Mode {
		return false
	}
	if now.Mode == "host" {
		return rec.SourceNodeID == cfg.NodeID
	}
	a, _ := json.Marshal(rec.Network.Addresses)
	b, _ := json.Marshal(now.Addresses)
	return string(a) == string(b)
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
