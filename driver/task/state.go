// Package task holds what the driver knows about each task: the state Nomad
// persists in the task handle, and the live handle that waits for the task.
package task

import "time"

// State is stored by Nomad with the task handle (drivers.TaskHandle's driver
// state) and is all the driver needs to find a task again after a restart.
type State struct {
	ContainerID  string    // runc container id
	Dir          string    // task directory: config.json, rootfs, upper, work
	ShimDir      string    // the shim's state directory
	ImageRef     string    // image as the task named it
	ImageDigest  string    // manifest digest of the image in use
	Platform     string    // os/arch[/variant] of the image
	StartedAt    time.Time // when the container started
	ShimPID      int
	ContainerPID int

	// Checkpoint is set when the task is checkpointed as its allocation
	// migrates, with the CRIU options it asked for.
	Checkpoint     bool
	TCPEstablished bool
	FileLocks      bool
	// Lazy: the task asked for lazy (post-copy) moves, its source serving
	// its memory for at most LazyTimeout.
	Lazy        bool
	LazyTimeout time.Duration
	// Periodic, when set, checkpoints the running task that often,
	// keeping the newest PeriodicKeep checkpoints.
	Periodic     time.Duration
	PeriodicKeep int
	// RestoredFrom is the allocation whose checkpoint this task was restored from.
	RestoredFrom string
}
