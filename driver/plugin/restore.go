package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/cni"
	"github.com/ferry-nomad/ferry/driver/image"
	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/sdk"
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
	// lazy is the lazy-pages daemon that brings a lazy checkpoint's
	// memory, once launch has started it.
	lazy *checkpoint.LazyPages
}

// errNoCheckpoint means the task starts fresh: there is no checkpoint to
// restore, and that is no failure.
var errNoCheckpoint = errors.New("no checkpoint")

// restore starts the task from the checkpoint of the allocation it replaces.
// restored is false when the task should start fresh instead: there is no
// checkpoint, or restoring failed and the task asked for a cold start (a task
// event says why). An error means the task asked to fail instead.
func (d *Driver) restore(cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest, logger hclog.Logger) (*drivers.TaskHandle, bool, error) {
	var keepPeriodic bool // the periodic checkpoints of a lost predecessor
	ctx, cancel := context.WithTimeout(d.ctx, req.restoreWait+checkpointTimeout)
	defer cancel()

	rec, secret, err := d.awaitCheckpoint(ctx, env, cfg, req.restoreWait)
	var lost *predecessorLost
	if errors.As(err, &lost) {
		// Its node is gone, and with it any move: its last periodic
		// checkpoint is all there is. Once resumed, or once the task
		// started fresh instead, its checkpoints go; a task that asked to
		// fail (on_restore_failure), or whose record could not be read,
		// finds them again at its next start.
		rec, err = d.periodicCheckpoint(ctx, env, cfg, req, lost)
		keepPeriodic = errors.Is(err, errPeriodicUnread)
		defer func() {
			if !keepPeriodic {
				d.cleanups.Go(func() { d.removePeriodic(env, lost.alloc.ID, cfg.Name, logger) })
			}
		}()
	}
	if errors.Is(err, errNoCheckpoint) {
		logger.Debug("starting fresh", "reason", err)
		return nil, false, nil
	}
	var handle *drivers.TaskHandle
	if err == nil {
		if lost == nil {
			d.emit(cfg, fmt.Sprintf("Restoring from checkpoint of %s on %s", shortID(rec.AllocID), rec.SourceNodeName), nil)
		}
		var got *obtained
		handle, got, err = d.restoreFrom(ctx, cfg, conf, env, req, rec, secret, logger)
		if err == nil && got.lazy != nil {
			announceMove(cfg, logger)
			d.restoredLazily(ctx, env, cfg, rec, got, logger)
			return handle, true, nil
		}
		if err == nil {
			announceMove(cfg, logger)
			details := map[string]string{
				sdk.EventRestoredFrom: rec.AllocID, sdk.EventSourceNode: rec.SourceNodeName, sdk.EventRestore: string(catalog.StateRestored),
				sdk.EventReceived: got.kind, sdk.EventRestoreMs: strconv.FormatInt(got.restore.Milliseconds(), 10),
				sdk.EventFetchMs: strconv.FormatInt(got.fetch.Milliseconds(), 10),
			}
			if lost != nil {
				details[sdk.EventPeriodic] = rec.CreatedAt.Format(time.RFC3339)
				d.emit(cfg, lost.resumed(rec, got), details)
				return handle, true, nil
			}
			d.finishRestore(ctx, env, cfg, rec, catalog.StateRestored, "", logger)
			d.emit(cfg, fmt.Sprintf("Restored from checkpoint of %s on %s: %s %s, restored in %s",
				shortID(rec.AllocID), rec.SourceNodeName, humanBytes(rec.Bytes), got.how, got.restore.Round(10*time.Millisecond)),
				details)
			return handle, true, nil
		}
		var cross *crossArchError
		if errors.As(err, &cross) {
			// Expected, not a failure: the task starts fresh from the image
			// for this node, without the rootfs changes (they may hold
			// binaries of the other architecture).
			d.finishRestore(ctx, env, cfg, rec, catalog.StateColdStart, cross.Error(), logger)
			d.emit(cfg, fmt.Sprintf("Moved across architectures (%s to %s): memory cannot cross, starting fresh from the image for %s", cross.from, cross.to, cross.to),
				map[string]string{sdk.EventRestoredFrom: rec.AllocID, sdk.EventColdStart: "cross_arch", sdk.EventRestore: string(catalog.StateColdStart)})
			return nil, false, nil
		}
		d.finishRestore(ctx, env, cfg, rec, catalog.StateFailed, err.Error(), logger)
	}
	logger.Warn("restore failed", "error", err)
	failed := map[string]string{sdk.EventRestore: string(catalog.StateFailed)}
	if req.Checkpoint.OnRestoreFailure == restoreFailureFail {
		keepPeriodic = true
		d.emit(cfg, "Restore failed: "+err.Error(), failed)
		return nil, false, fmt.Errorf("restore from checkpoint: %w (checkpoint.on_restore_failure = \"fail\")", err)
	}
	d.emit(cfg, "Restore failed, starting fresh: "+err.Error(), failed)
	return nil, false, nil
}

// awaitCheckpoint finds the checkpoint record of the allocation cfg replaces
// and waits, at most wait, for it to be ready; then claims it for this
// allocation so no other can restore it, granting this node the fetch of
// it: the secret returned is the credential.
func (d *Driver) awaitCheckpoint(ctx context.Context, env *environment, cfg *drivers.TaskConfig, wait time.Duration) (*catalog.Record, string, error) {
	rec, err := d.readyCheckpoint(ctx, env, cfg, wait)
	if err != nil {
		return nil, "", err
	}
	if rec.State == catalog.StateRestoring {
		// This allocation claimed it before its client restarted: what the
		// interrupted restore may have left running goes first.
		d.emit(cfg, fmt.Sprintf("Resuming the interrupted restore of %s", shortID(rec.AllocID)), nil)
		d.removeEarlierAttempts(ctx, env, cfg)
	}
	secret, sha := transfer.NewSecret()
	rec, err = env.catalog.Transition(ctx, rec.AllocID, cfg.Name, []catalog.State{catalog.StateReady, catalog.StateRestoring}, func(r *catalog.Record) error {
		if r.State == catalog.StateRestoring && r.DestAllocID != cfg.AllocID {
			return fmt.Errorf("claimed by allocation %s", shortID(r.DestAllocID))
		}
		r.State = catalog.StateRestoring
		r.DestAllocID, r.DestNodeID, r.DestNodeName = cfg.AllocID, cfg.NodeID, cfg.NodeName
		r.Fetch = &catalog.Grant{NodeID: cfg.NodeID, SHA256: sha, Expires: time.Now().Add(fetchGrantTTL).UTC()}
		return nil
	})
	return rec, secret, err
}

// fetchGrantTTL is how long a destination may fetch the checkpoint it
// claimed.
const fetchGrantTTL = 30 * time.Minute

// readyCheckpoint finds the checkpoint record of the allocation cfg
// replaces and waits, at most wait, for it to be ready.
func (d *Driver) readyCheckpoint(ctx context.Context, env *environment, cfg *drivers.TaskConfig, wait time.Duration) (*catalog.Record, error) {
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
	moved, err := env.catalog.Get(ctx, prevID, cfg.Name)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return nil, err
	}
	if recorded := err == nil; !recorded || !claimable(moved, cfg) {
		prev, _, err := env.nomad.Allocations().Info(prevID, q)
		if err != nil {
			return nil, fmt.Errorf("read previous allocation %s from Nomad: %w", prevID, err)
		}
		switch {
		case nodeLost(prev):
			// Lost with its node, maybe in the middle of a move that will
			// never end: its periodic checkpoints are all there is.
			return nil, &predecessorLost{alloc: prev}
		case recorded:
			// A move under way: its record is waited for below.
		case !prev.DesiredTransition.ShouldMigrate():
			// No record yet: one comes only if the previous allocation migrates.
			return nil, fmt.Errorf("%w: previous allocation %s did not migrate", errNoCheckpoint, shortID(prevID))
		case prev.ClientTerminalStatus():
			// The source records a checkpoint before its task exits.
			return nil, fmt.Errorf("%w: previous allocation %s stopped without one", errNoCheckpoint, shortID(prevID))
		}
	}
	d.emit(cfg, fmt.Sprintf("Waiting for the checkpoint of %s", shortID(prevID)), nil)
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	rec, err := d.waitClaimable(wctx, env, cfg, prevID)
	if err != nil {
		// What a push brought of a checkpoint that never became ready
		// goes: this allocation starts without it.
		d.dropIncoming(env, prevID, cfg.Name)
	}
	switch {
	case err != nil && rec == nil:
		return nil, fmt.Errorf("%w: none recorded for %s within checkpoint.restore_wait (%s)", errNoCheckpoint, shortID(prevID), wait)
	case err != nil:
		return nil, fmt.Errorf("checkpoint of %s not ready within checkpoint.restore_wait (%s): state %s", shortID(prevID), wait, rec.State)
	case rec.State == catalog.StateFailed:
		return nil, fmt.Errorf("%w: the source could not checkpoint: %s", errNoCheckpoint, rec.Reason)
	case rec.State == catalog.StateRestored || rec.State == catalog.StateColdStart:
		return nil, fmt.Errorf("%w: allocation %s took the checkpoint of %s", errNoCheckpoint, shortID(rec.DestAllocID), shortID(prevID))
	}
	return rec, nil
}

// claimable reports whether cfg's allocation may restore the checkpoint
// rec records: it is ready, or this allocation claimed it already.
func claimable(rec *catalog.Record, cfg *drivers.TaskConfig) bool {
	return rec.State == catalog.StateReady || rec.State == catalog.StateRestoring && rec.DestAllocID == cfg.AllocID
}

// dropIncoming removes the checkpoint of allocID's task pushed to this
// node, unless a push into it is still being received.
func (d *Driver) dropIncoming(env *environment, allocID, task string) {
	dir, err := checkpoint.Dir(env.layout.incoming(), allocID, task)
	if err != nil || env.transfer == nil || env.transfer.server.Receiving(dir) {
		return
	}
	if err := checkpoint.Remove(dir); err != nil {
		d.logger.Warn("remove pushed checkpoint no restore will take", "dir", dir, "error", err)
		return
	}
	_ = os.Remove(filepath.Dir(dir)) // the allocation's directory, once empty
}

// waitClaimable waits for the checkpoint record of prevID's task to be
// ready, failed, or claimed by this allocation already: its restore was
// interrupted (the client restarted) and starts over.
func (d *Driver) waitClaimable(ctx context.Context, env *environment, cfg *drivers.TaskConfig, prevID string) (*catalog.Record, error) {
	for {
		rec, err := env.catalog.WaitState(ctx, prevID, cfg.Name, catalog.StateReady, catalog.StateFailed, catalog.StateRestoring)
		if err != nil || rec.State != catalog.StateRestoring || rec.DestAllocID == cfg.AllocID {
			return rec, err
		}
		// Another allocation restores it: wait for the outcome, which
		// leaves this one nothing to claim.
		if rec, err = env.catalog.WaitState(ctx, prevID, cfg.Name, catalog.StateReady, catalog.StateFailed,
			catalog.StateRestored, catalog.StateColdStart); err != nil || rec.State == catalog.StateReady {
			if err != nil {
				return rec, err
			}
			continue
		}
		return rec, nil
	}
}

// removeEarlierAttempts stops and removes the containers of cfg's task
// that an earlier, interrupted start of this allocation left behind: Nomad
// gives each start of a task a new ID, so they are not this task's, and
// would otherwise run beside it until the dangling containers reconciler
// took them.
func (d *Driver) removeEarlierAttempts(ctx context.Context, env *environment, cfg *drivers.TaskConfig) {
	found, err := d.findDangling(ctx, env, time.Now())
	if err != nil {
		d.logger.Warn("cannot look for containers of an interrupted restore", "alloc_id", cfg.AllocID, "error", err)
		return
	}
	prefix := containerPrefix(cfg.AllocID, cfg.Name)
	for _, c := range found {
		if !strings.HasPrefix(c.id, prefix) || c.id == containerID(cfg) {
			continue
		}
		release, ok := d.tracked.claim(c.id, d.tasks.ContainerIDs)
		if !ok {
			continue
		}
		logger := d.logger.With("container", c.id, "alloc_id", cfg.AllocID, "task", cfg.Name)
		d.removeDangling(ctx, env, c, logger)
		release()
	}
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

// obtained is how a checkpoint reached this node.
type obtained struct {
	// kind is "local", "shared", "pushed" or "fetched"; how says so for
	// the task event.
	kind, how string
	// fetch is how long fetching it took, if it was fetched; restore how
	// long restoring the container took.
	fetch, restore time.Duration
	// lazy is the daemon bringing the memory of a lazy checkpoint, the
	// checkpoint in dir, to be removed once it is done if received.
	lazy     *checkpoint.LazyPages
	dir      string
	received bool
}

// restoreFrom gets the checkpoint, then restores it. The image the
// checkpoint was taken from is pulled meanwhile.
func (d *Driver) restoreFrom(ctx context.Context, cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest, rec *catalog.Record, secret string, logger hclog.Logger) (*drivers.TaskHandle, *obtained, error) {
	platform := env.platform
	if !sameArch(rec.Platform, platform) {
		return nil, nil, &crossArchError{from: rec.Platform, to: platform}
	}
	// The image the checkpoint was taken from, even if the tag moved since.
	pinned := *req
	if req.ref.Remote != nil {
		pinned.ref.Remote = req.ref.Remote.Context().Digest(rec.ImageDigest)
	}
	type pullResult struct {
		img *image.Image
		err error
	}
	pulled := make(chan pullResult, 1)
	go func() {
		img, err := d.pull(cfg, conf, env, &pinned)
		pulled <- pullResult{img, err}
	}()

	dir, m, got, err := d.obtain(ctx, cfg, env, rec, secret, logger)
	if err != nil {
		return nil, nil, err
	}
	got.dir, got.received = dir, got.kind == "pushed" || got.kind == "fetched"
	defer func() {
		// A lazy restore's daemon reads the checkpoint until it is done.
		if got.received && got.lazy == nil {
			if err := checkpoint.Remove(dir); err != nil {
				logger.Warn("remove received checkpoint", "error", err)
			}
		}
	}()
	if err := d.checkVersions(ctx, conf, env, m); err != nil {
		return nil, nil, err
	}
	if m.ImageDigest != rec.ImageDigest {
		return nil, nil, fmt.Errorf("checkpoint manifest names image %s, the record %s", m.ImageDigest, rec.ImageDigest)
	}
	res := <-pulled
	if res.err != nil {
		return nil, nil, res.err
	}
	if res.img.Digest.String() != m.ImageDigest {
		return nil, nil, fmt.Errorf("image %s is now %s, the checkpoint was taken from %s", req.ref, res.img.Digest, m.ImageDigest)
	}
	opts := m.RestoreOptions(false)
	if opts.LazyPages {
		if err := lazyRestorable(env, rec); err != nil {
			return nil, nil, err
		}
	}
	if m.Options.TCPEstablished && !sameAddresses(rec, cfg) {
		// Connections cannot follow to another address: restore them
		// closed. CRIU binds each socket back to its old address first,
		// which this namespace lacks unless non-local binds are allowed.
		opts.TCPEstablished, opts.TCPClose = false, true
		undo, err := allowNonlocalBind(cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("restore connections closed: %w", err)
		}
		defer undo()
	}
	start := time.Now()
	from := &restoreSource{dir: dir, record: rec, options: opts}
	handle, err := d.launch(cfg, conf, env, req, res.img, from, logger)
	got.restore = time.Since(start)
	if err == nil {
		got.lazy = from.lazy
	}
	return handle, got, err
}

// obtain returns the directory and manifest of the checkpoint rec names,
// checked before CRIU sees it: the manifest must have the digest the source
// recorded, and its files the sizes (and sha256) it lists. The checkpoint
// is this node's own (the task moved to the node it ran on), on shared
// storage, pushed here while it was dumped, or else fetched now from the
// source's driver.
func (d *Driver) obtain(ctx context.Context, cfg *drivers.TaskConfig, env *environment, rec *catalog.Record, secret string, logger hclog.Logger) (string, *checkpoint.Manifest, *obtained, error) {
	switch {
	case rec.Shared:
		if !env.shared {
			return "", nil, nil, fmt.Errorf("the checkpoint is in the shared checkpoint_dir of %s, and this node has no checkpoint_dir: set it to the same shared storage", rec.SourceNodeName)
		}
		dir, err := checkpoint.Dir(env.checkpoints, rec.AllocID, rec.Task)
		if rec.Periodic != "" {
			dir, err = env.periodicCopies(rec.AllocID, rec.Task)
			dir = filepath.Join(dir, rec.Periodic)
		}
		if err != nil {
			return "", nil, nil, err
		}
		// Written by another node: this is its first read here.
		m, err := checkpoint.Open(dir, rec.ManifestSHA256, true)
		return dir, m, &obtained{kind: "shared", how: "read from the shared checkpoint_dir"}, err
	case rec.SourceNodeID == cfg.NodeID:
		dir, err := checkpoint.Find(env.checkpointRoots(), rec.AllocID, rec.Task)
		if err != nil {
			return "", nil, nil, err
		}
		m, err := checkpoint.Open(dir, rec.ManifestSHA256, false)
		return dir, m, &obtained{kind: "local", how: "taken on this node"}, err
	}
	dir, err := checkpoint.Dir(env.layout.incoming(), rec.AllocID, rec.Task)
	if err != nil {
		return "", nil, nil, err
	}
	if env.transfer == nil {
		return "", nil, nil, fmt.Errorf("the checkpoint is on %s, and this driver has no transfer TLS configured to receive it: set transfer { ca_file, cert_file, key_file } in the plugin config", rec.SourceNodeName)
	}
	// A push still arriving is nearly done: the source confirmed it or
	// gave up before Nomad handed the allocation over.
	if err := env.transfer.server.WaitReceived(ctx, dir); err != nil {
		return "", nil, nil, err
	}
	m, err := checkpoint.Open(dir, rec.ManifestSHA256, false)
	if err == nil {
		return dir, m, &obtained{kind: "pushed", how: "received while it was dumped"}, nil
	}
	if !errors.Is(err, checkpoint.ErrNoManifest) {
		return "", nil, nil, err
	}
	ep, err := endpointOf(ctx, env, rec.SourceNodeID, rec.SourceNodeName)
	if err != nil {
		return "", nil, nil, err
	}
	d.emit(cfg, fmt.Sprintf("Fetching checkpoint of %s from %s", shortID(rec.AllocID), rec.SourceNodeName), nil)
	start := time.Now()
	if _, err := transfer.Fetch(ctx, env.transfer.client, ep.Address, secret, rec.AllocID, rec.Task, rec.ManifestSHA256, dir, logger, env.transfer.limits); err != nil {
		return "", nil, nil, err
	}
	m, err = checkpoint.Open(dir, rec.ManifestSHA256, false)
	took := time.Since(start)
	return dir, m, &obtained{kind: "fetched", how: fmt.Sprintf("fetched in %s", took.Round(10*time.Millisecond)), fetch: took}, err
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
	if rec.Periodic != "" {
		return // a periodic checkpoint's record is never stored
	}
	_, err := env.catalog.Transition(ctx, rec.AllocID, rec.Task, []catalog.State{catalog.StateRestoring}, func(r *catalog.Record) error {
		r.State, r.Reason = state, reason
		return nil
	})
	if err != nil {
		logger.Warn("record restore outcome", "state", state, "error", err)
	}
}

// announceMove tells the L2 that the restored task's addresses are now
// here (gratuitous ARP from its namespace), so that switches and peers send
// to this node at once rather than once their caches expire.
func announceMove(cfg *drivers.TaskConfig, logger hclog.Logger) {
	if cfg.NetworkIsolation == nil || cfg.NetworkIsolation.Path == "" {
		return // host networking: the node's addresses did not move
	}
	if err := cni.Announce(cfg.NetworkIsolation.Path); err != nil {
		logger.Warn("announce the restored task's addresses", "error", err)
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
