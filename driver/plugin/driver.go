package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/image"
	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/ferry-nomad/ferry/driver/spec"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/client/lib/cpustats"
	"github.com/hashicorp/nomad/drivers/shared/eventer"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
	"golang.org/x/sys/unix"
)

var (
	_ drivers.DriverPlugin            = (*Driver)(nil)
	_ drivers.ExecTaskStreamingDriver = (*Driver)(nil)
)

// Driver is the ferry task driver.
type Driver struct {
	ctx     context.Context
	cancel  context.CancelFunc
	logger  hclog.Logger
	eventer *eventer.Eventer
	tasks   *task.Store
	// tracked holds the tasks being started or recovered, which are not in
	// tasks yet, for the dangling containers reconciler.
	tracked    tracking
	reconciler sync.Once
	// cleanups are the cleanups of destroyed tasks still running.
	cleanups sync.WaitGroup
	// serving holds "alloc/task" of the lazy moves whose source this
	// driver is (serveLazily), whose records the reaper leaves to them.
	serving sync.Map

	// set by SetConfig
	mu     sync.RWMutex
	config *Config
	env    *environment
}

// environment is what SetConfig builds from the plugin config.
type environment struct {
	platform    string // os/arch[/variant] images are chosen for
	compute     cpustats.Compute
	layout      layout
	runc        *runc.Runc
	criu        *criuProbe
	images      *image.Store
	self        string // this binary, re-executed as each task's shim
	nomad       *nomadapi.Client
	catalog     *catalog.Catalog
	checkpoints string // where checkpoints are kept: checkpoint_dir, or data_dir/checkpoints
	shared      bool   // checkpoints is a checkpoint_dir every node mounts
	node        *nodeIdentity
	transfer    *transferEnv // nil without transfer TLS
	// startNode starts the node's background work once (see
	// Driver.startNode); stop ends it.
	startNode func()
	stop      context.CancelFunc
}

// New returns the driver; Nomad configures it with SetConfig.
func New(logger hclog.Logger) *Driver {
	ctx, cancel := context.WithCancel(context.Background())
	logger = logger.Named(sdk.DriverName)
	return &Driver{
		ctx:     ctx,
		cancel:  cancel,
		logger:  logger,
		eventer: eventer.NewEventer(ctx, logger),
		tasks:   task.NewStore(),
	}
}

func (d *Driver) PluginInfo() (*base.PluginInfoResponse, error) { return pluginInfo(), nil }

func (d *Driver) ConfigSchema() (*hclspec.Spec, error) { return configSpec, nil }

func (d *Driver) TaskConfigSchema() (*hclspec.Spec, error) { return taskConfigSpec, nil }

func (d *Driver) Capabilities() (*drivers.Capabilities, error) { return capabilities, nil }

func (d *Driver) TaskEvents(ctx context.Context) (<-chan *drivers.TaskEvent, error) {
	return d.eventer.TaskEvents(ctx)
}

// SetConfig validates the plugin config and prepares the driver's directories,
// image store and runc wrapper.
func (d *Driver) SetConfig(c *base.Config) error {
	var cfg Config
	if len(c.PluginConfig) != 0 {
		if err := base.MsgPackDecode(c.PluginConfig, &cfg); err != nil {
			return fmt.Errorf("decode plugin config: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("plugin \"nomad-driver-ferry\" config: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the driver binary: %w", err)
	}
	l := layout{dataDir: cfg.DataDir, stateDir: cfg.StateDir}
	if err := l.create(); err != nil {
		return err
	}
	images, err := image.NewStore(image.StoreConfig{
		Dir:          l.images(),
		GCEnabled:    cfg.GC.Image,
		GCDelay:      cfg.GC.imageDelay,
		MaxLayerSize: cfg.Images.maxLayerSize,
		MinFreeSpace: cfg.Images.minFreeSpace,
		Logger:       d.logger.Named("images"),
	})
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	platform, err := nodePlatform(cfg.Platform)
	if err != nil {
		return fmt.Errorf("platform: %w", err)
	}
	nomadConf := nomadapi.DefaultConfig()
	if cfg.Nomad.Address != "" {
		nomadConf.Address = cfg.Nomad.Address
	}
	if cfg.Nomad.Token != "" {
		nomadConf.SecretID = cfg.Nomad.Token
	}
	nomadClient, err := nomadapi.NewClient(nomadConf)
	if err != nil {
		return fmt.Errorf("nomad: %w", err)
	}
	cat, err := catalog.NewFromConfig(cfg.Consul.Address, cfg.Consul.Token, d.logger.Named("catalog"))
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	checkpoints := cfg.CheckpointDir
	if checkpoints == "" {
		checkpoints = l.checkpoints()
	}
	if err := os.MkdirAll(checkpoints, 0o700); err != nil {
		return fmt.Errorf("checkpoint_dir: %w", err)
	}

	ctx, stop := context.WithCancel(d.ctx)
	env := &environment{
		platform:    platform,
		layout:      l,
		runc:        &runc.Runc{Path: cfg.RuncPath, Root: l.runcRoot(), Logger: d.logger.Named("runc")},
		criu:        &criuProbe{},
		images:      images,
		self:        self,
		nomad:       nomadClient,
		catalog:     cat,
		checkpoints: checkpoints,
		shared:      cfg.CheckpointDir != "",
		node:        newNodeIdentity(),
		stop:        stop,
	}
	if c.AgentConfig != nil {
		env.compute = c.AgentConfig.Compute()
	}
	if env.transfer, err = d.newTransfer(&cfg, env); err != nil {
		stop()
		images.Close()
		return fmt.Errorf("plugin \"nomad-driver-ferry\" config: %w", err)
	}
	env.startNode = sync.OnceFunc(func() { d.startNode(ctx, &cfg, env) })

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env != nil {
		d.env.stop()
		d.env.images.Close()
	}
	d.config, d.env = &cfg, env
	d.startReconciler(cfg.GC.DanglingContainers)
	return nil
}

// writeDir is where this node writes the checkpoint of alloc's task for a
// move: the shared checkpoint_dir, else state_dir.
func (env *environment) writeDir(alloc, task string) (string, error) {
	if env.shared {
		return checkpoint.Dir(env.checkpoints, alloc, task)
	}
	return checkpoint.Dir(env.layout.scratch(), alloc, task)
}

// periodicCopies is where the copies of the periodic checkpoints of alloc's
// task are kept off this node: <checkpoint_dir>/periodic/<alloc>/<task>
// when checkpoint_dir is shared, else "".
func (env *environment) periodicCopies(alloc, task string) (string, error) {
	if !env.shared {
		return "", nil
	}
	return checkpoint.Dir(filepath.Join(env.checkpoints, periodicCopiesDir), alloc, task)
}

// periodicCopiesDir is the directory of the shared checkpoint_dir that
// holds the copies of periodic checkpoints, beside the checkpoints of
// moves (<alloc>/<task>).
const periodicCopiesDir = "periodic"

// checkpointRoots are where this node's checkpoints may be: written for a
// move, then kept for later.
func (env *environment) checkpointRoots() []string {
	return []string{env.layout.scratch(), env.checkpoints}
}

// lookup returns a task and the configuration in force.
func (d *Driver) lookup(taskID string) (*task.Handle, *Config, *environment, error) {
	h, ok := d.tasks.Get(taskID)
	if !ok {
		return nil, nil, nil, drivers.ErrTaskNotFound
	}
	conf, env, err := d.current()
	return h, conf, env, err
}

// current returns the configuration in force, or an error before SetConfig.
func (d *Driver) current() (*Config, *environment, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.env == nil {
		return nil, nil, errors.New("driver is not configured yet")
	}
	return d.config, d.env, nil
}

func (d *Driver) emit(cfg *drivers.TaskConfig, msg string, annotations map[string]string) {
	err := d.eventer.EmitEvent(&drivers.TaskEvent{
		TaskID:      cfg.ID,
		TaskName:    cfg.Name,
		AllocID:     cfg.AllocID,
		Timestamp:   time.Now(),
		Message:     msg,
		Annotations: annotations,
	})
	if err != nil {
		d.logger.Warn("emit task event", "task", cfg.ID, "error", err)
	}
}

// StartTask pulls the image, prepares the task's rootfs and runtime spec, and
// runs the container under a shim of its own. A task with checkpointing whose
// allocation replaces a migrated one is restored from its checkpoint instead.
// A failed start leaves nothing behind.
func (d *Driver) StartTask(cfg *drivers.TaskConfig) (*drivers.TaskHandle, *drivers.DriverNetwork, error) {
	// Tracked before anything of the container exists, until it is in the
	// task store or its failed start was cleaned up.
	defer d.tracked.begin(containerID(cfg))()
	if _, ok := d.tasks.Get(cfg.ID); ok {
		return nil, nil, fmt.Errorf("task %s already started", cfg.ID)
	}
	conf, env, err := d.current()
	if err != nil {
		return nil, nil, err
	}
	var tc TaskConfig
	if err := cfg.DecodeDriverConfig(&tc); err != nil {
		return nil, nil, fmt.Errorf("task config: %w", err)
	}
	req, err := conf.validateTask(tc, cfg, env.platform)
	if err != nil {
		return nil, nil, fmt.Errorf("task config: %w", err)
	}
	logger := d.logger.With("task", cfg.Name, "alloc_id", cfg.AllocID)
	// Nomad stops collecting a task's logs once every writer of its log
	// FIFOs has closed them: a restore that fails after its shim opened them
	// must not end the logs of the fresh start that follows.
	defer holdLogs(cfg)()

	if req.Checkpoint.Enabled {
		handle, restored, err := d.restore(cfg, conf, env, req, logger)
		if restored || err != nil {
			return handle, nil, err
		}
	}
	img, err := d.pull(cfg, conf, env, req)
	if err != nil {
		return nil, nil, err
	}
	handle, err := d.launch(cfg, conf, env, req, img, nil, logger)
	return handle, nil, err
}

// launch runs img for the task: a fresh start, or, with from set, a restore
// of the checkpoint in from.dir. It owns img's reference from then on.
func (d *Driver) launch(cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest, img *image.Image, from *restoreSource, logger hclog.Logger) (*drivers.TaskHandle, error) {
	env.images.Acquire(img.Digest)
	cid := containerID(cfg)
	st := task.State{
		ContainerID:    cid,
		Dir:            env.layout.taskDir(cid),
		ShimDir:        env.layout.shimDir(cid),
		ImageRef:       req.ref.String(),
		ImageDigest:    img.Digest.String(),
		Platform:       platformString(img.Platform),
		Checkpoint:     req.Checkpoint.Enabled,
		TCPEstablished: req.Checkpoint.TCPEstablished,
		FileLocks:      req.Checkpoint.FileLocks,
		Lazy:           req.Checkpoint.Mode == checkpointModeLazy,
		LazyTimeout:    req.lazyTimeout,
		Periodic:       req.interval,
		PeriodicKeep:   req.Checkpoint.Keep,
	}
	started := false
	defer func() {
		if !started {
			d.cleanup(env, st, logger)
		}
	}()

	sc := taskShim(conf, env, cfg, st)
	if from != nil {
		if err := checkpoint.PrepareTaskDir(from.dir, st.Dir); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		sc = restoringShim(sc, from.dir, from.options)
		st.RestoredFrom = from.record.AllocID
	}
	rootfs, err := mountRootfs(img.RootFS, st.Dir)
	if err != nil {
		return nil, err
	}
	s, err := spec.Build(spec.Input{
		ContainerID: cid,
		RootFS:      rootfs,
		Readonly:    req.ReadonlyRootfs,
		Image:       img.Config,
		Entrypoint:  req.Entrypoint,
		Command:     req.Command,
		Args:        req.Args,
		WorkDir:     req.WorkDir,
		User:        firstNonEmpty(req.User, cfg.User),
		Hostname:    req.Hostname,
		CapAdd:      req.CapAdd,
		CapDrop:     req.CapDrop,
		Mounts:      req.mounts,
		Task:        cfg,
		CgroupsPath: cgroupsPath(cfg),
		CriuConfig:  filepath.Join(st.Dir, checkpoint.CriuConfigName),
	})
	if err != nil {
		return nil, fmt.Errorf("runtime spec: %w", err)
	}
	if err := spec.Write(s, st.Dir); err != nil {
		return nil, fmt.Errorf("runtime spec: %w", err)
	}
	if from != nil {
		if err := checkpoint.RebaseSpec(st.Dir, from.options); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	} else {
		d.checkEntrypoint(cfg, s)
	}

	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel()
	if from != nil && from.options.LazyPages {
		// Its daemon listens before the restore hands it the memory.
		if from.lazy, err = startLazyPages(conf, env, from, sc.WorkPath); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		defer func() {
			if !started {
				from.lazy.Stop()
				from.lazy = nil
			}
		}()
	}
	proc, err := shim.Start(ctx, env.self, st.ShimDir, sc)
	if err != nil {
		if from != nil {
			if tail := runc.CriuLogTail(filepath.Join(sc.WorkPath, runc.RestoreLog)); tail != "" {
				return nil, fmt.Errorf("restore container: %w; %s: %s", err, runc.RestoreLog, tail)
			}
			return nil, fmt.Errorf("restore container: %w", err)
		}
		return nil, fmt.Errorf("start container: %w", err)
	}
	if from != nil {
		// The restore options must not apply to the task's next dump.
		if err := checkpoint.RemoveCriuConfig(st.Dir); err != nil {
			logger.Warn("remove restore options", "error", err)
		}
	}
	if from != nil && from.lazy != nil {
		// From now on the task waits for a missing page rather than
		// read it as zeros, should the daemon die.
		if _, err := from.lazy.Guard(); err != nil {
			_ = env.runc.Kill(ctx, cid, unix.SIGKILL, true)
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	st.StartedAt = time.Now()
	st.ShimPID = proc.ShimPID
	st.ContainerPID = proc.ContainerPID

	handle := drivers.NewTaskHandle(taskHandleVersion)
	handle.Config = cfg
	if err := handle.SetDriverState(&st); err != nil {
		_ = env.runc.Kill(ctx, cid, unix.SIGKILL, true)
		return nil, fmt.Errorf("store task state: %w", err)
	}
	started = true
	h := task.NewHandle(cfg, st, proc, logger)
	d.tasks.Set(cfg.ID, h)
	logger.Info("task started", "container", cid, "image", st.ImageRef, "digest", st.ImageDigest, "pid", proc.ContainerPID, "mode", sc.Mode)
	if st.Periodic > 0 {
		if len(req.mounts) > 0 || len(cfg.Mounts) > 0 {
			d.emit(cfg, "Periodic checkpoints hold the task's memory and rootfs, not its volumes: files it writes there move on after each checkpoint, and a task resumed from one finds them as they are then", nil)
		}
		h.Background.Go(func() { d.checkpointPeriodically(conf, env, h) })
	}
	return handle, nil
}

// cleanup removes a task's container, rootfs, directories and image reference.
// Every step runs even if an earlier one failed.
func (d *Driver) cleanup(env *environment, st task.State, logger hclog.Logger) {
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	if err := env.runc.Delete(ctx, st.ContainerID, true); err != nil {
		logger.Warn("delete container", "container", st.ContainerID, "error", err)
	}
	if err := unmountRootfs(st.Dir); err != nil {
		logger.Warn("unmount rootfs", "dir", st.Dir, "error", err)
	}
	for _, dir := range []string{st.Dir, st.ShimDir} {
		if dir == "" {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			logger.Warn("remove task directory", "dir", dir, "error", err)
		}
	}
	if st.ImageDigest != "" {
		if h, err := parseDigest(st.ImageDigest); err == nil {
			env.images.Release(h)
		}
	}
}

func (d *Driver) WaitTask(ctx context.Context, taskID string) (<-chan *drivers.ExitResult, error) {
	h, ok := d.tasks.Get(taskID)
	if !ok {
		return nil, drivers.ErrTaskNotFound
	}
	ch := make(chan *drivers.ExitResult, 1)
	go func() {
		defer close(ch)
		select {
		case <-h.Done():
			ch <- h.ExitResult()
		case <-ctx.Done():
		case <-d.ctx.Done():
		}
	}()
	return ch, nil
}

// StopTask sends the task's kill_signal and, if it is still running after
// timeout, kills every process of the container.
func (d *Driver) StopTask(taskID string, timeout time.Duration, signal string) error {
	h, conf, env, err := d.lookup(taskID)
	if err != nil {
		return err
	}
	if h.Running() && d.checkpointForMigration(conf, env, h) {
		return nil
	}
	// A task dumped, then restored in place because its checkpoint failed
	// after the dump, has a new handle.
	if now, ok := d.tasks.Get(taskID); ok {
		h = now
	}
	return d.stop(env, h, timeout, signal)
}

func (d *Driver) stop(env *environment, h *task.Handle, timeout time.Duration, signal string) error {
	if !h.Running() {
		return nil
	}
	sig := unix.SIGTERM
	if signal != "" {
		s, err := parseSignal(signal)
		if err != nil {
			return err
		}
		sig = s
	}
	ctx, cancel := context.WithTimeout(d.ctx, timeout+time.Minute)
	defer cancel()
	cid := h.State.ContainerID
	if sig != unix.SIGKILL {
		if err := env.runc.Kill(ctx, cid, sig, false); err != nil && h.Running() {
			d.logger.Warn("send stop signal", "container", cid, "signal", signal, "error", err)
		}
		select {
		case <-h.Done():
			return nil
		case <-time.After(timeout):
		}
	}
	if err := env.runc.Kill(ctx, cid, unix.SIGKILL, true); err != nil && h.Running() {
		return fmt.Errorf("kill container %s: %w", cid, err)
	}
	select {
	case <-h.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("container %s did not exit after SIGKILL", cid)
	}
}

// DestroyTask removes a task; a running task is killed first when force is set.
func (d *Driver) DestroyTask(taskID string, force bool) error {
	h, _, env, err := d.lookup(taskID)
	if err != nil {
		return err
	}
	if h.Running() {
		if !force {
			return errors.New("task is still running; stop it first or destroy with force")
		}
		if err := d.stop(env, h, 0, "SIGKILL"); err != nil {
			return err
		}
	}
	// Unmounting the rootfs waits for the kernel (a few hundred ms), and
	// Nomad tells the allocation's replacement that it may start only
	// once this returns: clean up after, the container tracked meanwhile
	// so that the dangling containers reconciler leaves it alone.
	done := d.tracked.begin(h.State.ContainerID)
	d.tasks.Delete(taskID)
	logger := d.logger.With("task", h.Config.Name, "alloc_id", h.Config.AllocID)
	if h.Vacated() {
		// The source of a lazy move: its container serves the task's
		// memory until the move ends (serveLazily), however long the
		// driver's shutdown waits for its cleanups.
		go func() {
			defer done()
			select {
			case <-h.Gone():
			case <-d.ctx.Done():
				return
			}
			h.Release()
			d.cleanup(env, h.State, logger)
		}()
		return nil
	}
	h.Release()
	d.cleanups.Go(func() {
		defer done()
		h.Background.Wait()
		d.cleanup(env, h.State, logger)
		if h.State.Periodic > 0 {
			d.destroyPeriodic(env, h.Config, logger)
		}
	})
	return nil
}

func (d *Driver) InspectTask(taskID string) (*drivers.TaskStatus, error) {
	h, ok := d.tasks.Get(taskID)
	if !ok {
		return nil, drivers.ErrTaskNotFound
	}
	return h.Status(), nil
}

func (d *Driver) SignalTask(taskID string, signal string) error {
	h, _, env, err := d.lookup(taskID)
	if err != nil {
		return err
	}
	sig, err := parseSignal(signal)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	return env.runc.Kill(ctx, h.State.ContainerID, sig, false)
}

func parseSignal(name string) (syscall.Signal, error) {
	if s := unix.SignalNum(name); s != 0 {
		return s, nil
	}
	if s := unix.SignalNum("SIG" + name); s != 0 {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal %q; use a name such as \"SIGTERM\" or \"SIGUSR1\"", name)
}

// holdLogs opens the task's log FIFOs for writing, when Nomad reads them,
// until the returned function is called.
func holdLogs(cfg *drivers.TaskConfig) func() {
	var held []*os.File
	for _, p := range []string{cfg.StdoutPath, cfg.StderrPath} {
		if p == "" {
			continue
		}
		if f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			held = append(held, f)
		}
	}
	return func() {
		for _, f := range held {
			_ = f.Close()
		}
	}
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// Shutdown stops background work, after the cleanups of destroyed tasks;
// tasks keep running under their shims.
func (d *Driver) Shutdown() {
	d.cleanups.Wait()
	d.cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env != nil {
		d.env.stop()
		d.env.images.Close()
	}
}
