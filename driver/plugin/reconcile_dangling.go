package plugin

// Dangling containers are containers under the driver's directories (runc's
// root, data_dir/tasks, state_dir/shims) that no task of this driver tracks:
// Nomad forgot their allocation (its client state was lost, or it collected
// the allocation while the driver was down), so nobody would ever stop them.
// Every gc.dangling_containers.period the reconciler finds those older than
// creation_grace and stops and removes them, or only logs them in dry_run.
//
// A container is tracked while its task is in the task store, and while
// StartTask (fresh start or restore) or RecoverTask works on it: both
// register its container ID first, before any of its files or processes
// exist, and unregister it only once the task is in the store or its
// failed start was cleaned up. The reconciler claims a container under the
// same lock before it touches it, and a start or recovery of a container
// being removed waits for the removal to end, so a container is never
// tracked and removed at once.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/moby/sys/mountinfo"
)

// danglingStopTimeout is how long a dangling container has after SIGTERM
// before it is killed: Nomad's default kill_timeout, as its task's own is
// no longer known.
const danglingStopTimeout = 5 * time.Second

// tracking holds the containers of tasks being started, restored or
// recovered, which are not in the task store yet, and the containers the
// reconciler is removing. The zero value is ready to use.
type tracking struct {
	mu       sync.Mutex
	starting map[string]int           // container ID: StartTask/RecoverTask calls under way
	removing map[string]chan struct{} // container ID: closed when its removal ends
}

// begin tracks container cid until done is called. If the reconciler is
// removing cid, begin waits for that to end first.
func (t *tracking) begin(cid string) (done func()) {
	t.mu.Lock()
	for t.removing[cid] != nil {
		removed := t.removing[cid]
		t.mu.Unlock()
		<-removed
		t.mu.Lock()
	}
	if t.starting == nil {
		t.starting = map[string]int{}
	}
	t.starting[cid]++
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.starting[cid]--; t.starting[cid] <= 0 {
			delete(t.starting, cid)
		}
	}
}

// tracked is every container a task tracks: those starting, and those of
// stored, the task store's containers (read under the lock: a task is in
// the store before its begin is done, so one of the two always has it).
func (t *tracking) tracked(stored func() map[string]bool) map[string]bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := stored()
	for cid := range t.starting {
		ids[cid] = true
	}
	return ids
}

// claim marks cid as being removed, unless a task tracks it. release ends
// the removal.
func (t *tracking) claim(cid string, stored func() map[string]bool) (release func(), ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.starting[cid] > 0 || t.removing[cid] != nil || stored()[cid] {
		return nil, false
	}
	if t.removing == nil {
		t.removing = map[string]chan struct{}{}
	}
	removed := make(chan struct{})
	t.removing[cid] = removed
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.removing, cid)
		close(removed)
	}, true
}

// startReconciler starts the reconciler with the first configuration that
// enables it; it runs until the driver's context ends.
func (d *Driver) startReconciler(c DanglingConfig) {
	if !c.Enabled {
		return
	}
	d.reconciler.Do(func() {
		// Nomad recovers the tasks it knows right after the driver starts:
		// give it a period (or creation_grace, if longer) to do so.
		go d.reconcileLoop(max(c.period, c.creationGrace), c.period)
	})
}

func (d *Driver) reconcileLoop(first, period time.Duration) {
	timer := time.NewTimer(first)
	defer timer.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-timer.C:
			d.reconcileDangling(d.ctx)
			timer.Reset(period)
		}
	}
}

// danglingContainer is a container no task tracks, as found on disk.
type danglingContainer struct {
	id      string
	pid     int       // its init process, as runc knows it; 0 when runc does not
	created time.Time // the newest of runc's creation time and its files' times
	dirs    []string  // its task and shim directories that exist
}

// reconcileDangling runs one pass: it finds the dangling containers created
// at least creation_grace ago and stops and removes each, or in dry_run only
// logs them. It returns their IDs. A failure with one container is logged
// and the pass goes on.
func (d *Driver) reconcileDangling(ctx context.Context) []string {
	conf, env, err := d.current()
	if err != nil {
		return nil
	}
	dc := conf.GC.DanglingContainers
	found, err := d.findDangling(ctx, env, time.Now().Add(-dc.creationGrace))
	if err != nil {
		d.logger.Warn("cannot look for dangling containers", "error", err)
		return nil
	}
	var ids []string
	for _, c := range found {
		logger := d.logger.With("container", c.id, "pid", c.pid, "created", c.created, "dirs", c.dirs)
		if dc.DryRun {
			logger.Info("dangling container found; left alone (gc.dangling_containers.dry_run)")
			ids = append(ids, c.id)
			continue
		}
		release, ok := d.tracked.claim(c.id, d.tasks.ContainerIDs)
		if !ok {
			continue // a task took it up since it was found
		}
		d.removeDangling(ctx, env, c, logger)
		release()
		ids = append(ids, c.id)
	}
	return ids
}

// findDangling lists the containers runc knows and the task and shim
// directories on disk, and returns those no task tracks that were created
// before cutoff, by container ID.
func (d *Driver) findDangling(ctx context.Context, env *environment, cutoff time.Time) ([]danglingContainer, error) {
	l := env.layout
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	states, err := env.runc.List(lctx)
	cancel()
	if err != nil {
		return nil, err
	}
	found := map[string]*danglingContainer{}
	add := func(cid string) *danglingContainer {
		if found[cid] == nil {
			found[cid] = &danglingContainer{id: cid}
		}
		return found[cid]
	}
	for _, s := range states {
		if validContainerID(s.ID) {
			c := add(s.ID)
			c.pid, c.created = s.Pid, s.Created
		}
	}
	tasks, err := os.ReadDir(l.tasks())
	if err != nil {
		return nil, err
	}
	for _, e := range tasks {
		if e.IsDir() && validContainerID(e.Name()) {
			add(e.Name())
		}
	}
	shims, err := os.ReadDir(l.shims())
	if err != nil {
		return nil, err
	}
	for _, e := range shims {
		if !e.IsDir() {
			continue
		}
		// A shim directory is named after a hash of its container's ID,
		// which its config holds.
		dir := filepath.Join(l.shims(), e.Name())
		if sc, err := shim.ReadConfig(dir); err == nil && validContainerID(sc.ID) && l.shimDir(sc.ID) == dir {
			add(sc.ID)
		}
	}

	tracked := d.tracked.tracked(d.tasks.ContainerIDs)
	var out []danglingContainer
	for cid, c := range found {
		if tracked[cid] {
			continue
		}
		for _, dir := range []string{l.taskDir(cid), l.shimDir(cid)} {
			if _, err := os.Lstat(dir); err == nil {
				c.dirs = append(c.dirs, dir)
			}
		}
		// The task directory gets its files when the container is
		// created, the shim's config when its shim starts.
		for _, p := range []string{l.taskDir(cid), shim.ConfigPath(l.shimDir(cid))} {
			if fi, err := os.Lstat(p); err == nil && fi.ModTime().After(c.created) {
				c.created = fi.ModTime()
			}
		}
		if c.created.Before(cutoff) {
			out = append(out, *c)
		}
	}
	slices.SortFunc(out, func(a, b danglingContainer) int { return strings.Compare(a.id, b.id) })
	return out, nil
}

// validContainerID reports whether cid is a container ID the driver makes:
// one that names a directory entry of its own, never a path.
func validContainerID(cid string) bool {
	return cid != "" && cid != "." && cid != ".." && !unsafeID.MatchString(cid)
}

// removeDangling stops a dangling container as StopTask does (SIGTERM, then
// SIGKILL to all its processes; without a shim to wait on, runc delete
// --force kills it), deletes it, unmounts its rootfs and removes its task
// and shim directories. It holds no image reference: the image
// store collects its image once unused and unmounted. A step that fails is
// logged, and what depends on it is left for the next pass.
func (d *Driver) removeDangling(ctx context.Context, env *environment, c danglingContainer, logger hclog.Logger) {
	st := task.State{ContainerID: c.id, Dir: env.layout.taskDir(c.id), ShimDir: env.layout.shimDir(c.id)}
	if proc, err := shim.Attach(st.ShimDir); err == nil {
		// Its Nomad task is gone: the handle knows only the container.
		h := task.NewHandle(&drivers.TaskConfig{ID: c.id, Name: c.id}, st, proc, d.logger)
		if err := d.stop(env, h, danglingStopTimeout, "SIGTERM"); err != nil {
			logger.Warn("stop dangling container", "error", err)
		}
		h.Release()
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := env.runc.Delete(dctx, c.id, true)
	cancel()
	if err != nil {
		logger.Warn("delete dangling container; its directories stay", "error", err)
		return
	}
	if fi, err := os.Lstat(st.Dir); err == nil && fi.IsDir() {
		if err := unmountRootfs(st.Dir); err != nil {
			logger.Warn("unmount rootfs of dangling container; its directory stays", "error", err)
			return
		}
	}
	var removed []string
	for _, dir := range []string{st.Dir, st.ShimDir} {
		ok, err := removeDir(dir)
		if err != nil {
			logger.Warn("remove directory of dangling container", "dir", dir, "error", err)
		}
		if ok {
			removed = append(removed, dir)
		}
	}
	logger.Info("removed dangling container", "removed", removed)
}

// removeDir removes dir, a task or shim directory, and reports whether it
// was there. It never leaves the driver's directories: a symlink in dir's
// place is removed, not followed (os.RemoveAll follows none below it), and
// a directory with anything still mounted in it is kept.
func removeDir(dir string) (bool, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return true, os.Remove(dir)
	}
	// The mount table has real paths; data_dir may lie behind a symlink.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false, err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(real))
	if err != nil {
		return false, err
	}
	if len(mounts) > 0 {
		return false, fmt.Errorf("kept: %s is still mounted", mounts[0].Mountpoint)
	}
	return true, os.RemoveAll(dir)
}
