package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/hashicorp/nomad/plugins/drivers"
)

// layout names the driver's directories. data_dir holds what must survive a
// reboot (images, task rootfs changes, checkpoints kept for later, periodic
// checkpoints: periodic/<alloc>/<task>/<time>);
// state_dir holds runtime state (runc's root, the shims' sockets and pid
// files, and the checkpoints of moves in flight, which on a tmpfs never
// wait for the disk nor make Nomad's own writes wait for it).
type layout struct {
	dataDir  string
	stateDir string
}

func (l layout) images() string            { return filepath.Join(l.dataDir, "images") }
func (l layout) tasks() string             { return filepath.Join(l.dataDir, "tasks") }
func (l layout) taskDir(cid string) string { return filepath.Join(l.tasks(), cid) }
func (l layout) shims() string             { return filepath.Join(l.stateDir, "shims") }
func (l layout) runcRoot() string          { return filepath.Join(l.stateDir, "runc") }
func (l layout) checkpoints() string       { return filepath.Join(l.dataDir, "checkpoints") }
func (l layout) scratch() string           { return filepath.Join(l.stateDir, "checkpoints") }
func (l layout) incoming() string          { return filepath.Join(l.stateDir, "incoming") }
func (l layout) periodic() string          { return filepath.Join(l.dataDir, "periodic") }

// shimDir is short whatever the task's name: it holds the shim's unix socket,
// whose path may not exceed 107 bytes.
func (l layout) shimDir(cid string) string {
	sum := sha256.Sum256([]byte(cid))
	return filepath.Join(l.shims(), hex.EncodeToString(sum[:8]))
}

func (l layout) create() error {
	for _, dir := range []string{l.images(), l.tasks(), l.checkpoints(), l.scratch(), l.incoming(), l.periodic(), l.runcRoot(), l.shims()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	return nil
}

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9_.+-]`)

// containerID derives the runc container id from Nomad's task id
// ("<alloc>/<task>/<random>"), which is unique for every start of a task.
func containerID(cfg *drivers.TaskConfig) string {
	return unsafeID.ReplaceAllString(cfg.ID, ".")
}

// containerPrefix is what the container IDs of every start of alloc's task
// begin with.
func containerPrefix(alloc, task string) string {
	return containerID(&drivers.TaskConfig{ID: alloc + "/" + task + "/"})
}

// cgroupsPath puts a task's cgroups under Nomad's own "/nomad" hierarchy.
func cgroupsPath(cfg *drivers.TaskConfig) string {
	return "/nomad/ferry/" + containerID(cfg)
}
