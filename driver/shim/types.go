// Package shim runs one small process per task that owns the task's
// container. The driver starts it by re-executing its own binary as
// `<driver> shim <stateDir>`; the shim starts (or restores) the container
// with runc, copies its output to Nomad's log FIFOs, reaps it, records its
// exit status and reports it over a unix socket. It outlives the driver, so
// a restarted driver re-attaches to it with Attach.
package shim

import (
	"path/filepath"
	"time"
)

// Modes of starting the container.
const (
	ModeRun     = "run"
	ModeRestore = "restore"
)

// Files in the state directory.
const (
	configFile    = "shim.json"
	shimPidFile   = "shim.pid"
	containerPid  = "container.pid"
	socketFile    = "shim.sock"
	exitFile      = "exit.json"
	startErrFile  = "start.err"
	ackFile       = "ack"
	shimLogFile   = "shim.log"
	runcLogFile   = "runc.log"
	maxSocketPath = 107 // sizeof(sockaddr_un.sun_path) - 1
)

// Config tells the shim what to run. It is written to <stateDir>/shim.json.
type Config struct {
	// ID is the container id.
	ID string `json:"id"`
	// Bundle is the OCI bundle directory.
	Bundle string `json:"bundle"`
	// RuncPath is the runc binary.
	RuncPath string `json:"runc_path"`
	// RuncRoot is runc's --root state directory.
	RuncRoot string `json:"runc_root"`
	// StdoutPath and StderrPath receive the container's output; normally
	// Nomad's log FIFOs. Empty discards the stream.
	StdoutPath string `json:"stdout_path"`
	StderrPath string `json:"stderr_path"`
	// Mode is ModeRun or ModeRestore; empty means ModeRun.
	Mode string `json:"mode"`
	// ImagePath is the CRIU image directory to restore from.
	ImagePath string `json:"image_path,omitempty"`
	// WorkPath is CRIU's work directory for restore logs; optional.
	WorkPath string `json:"work_path,omitempty"`
	// RestoreArgs are extra `runc restore` flags, e.g. --tcp-established.
	RestoreArgs []string `json:"restore_args,omitempty"`
}

// ExitStatus is how the container's init process ended.
type ExitStatus struct {
	// ExitCode is the exit status, or 128+Signal when killed by a signal.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the process, or 0.
	Signal int `json:"signal"`
	// OOMKilled is set when the process was killed by the OOM killer.
	OOMKilled bool `json:"oom_killed"`
	// ExitedAt is when the shim saw the process exit.
	ExitedAt time.Time `json:"exited_at"`
	// Err describes why the status is incomplete, if it is.
	Err string `json:"err,omitempty"`
}

// ConfigPath is where Start writes the shim's Config in its state
// directory.
func ConfigPath(stateDir string) string { return statePath(stateDir, configFile) }

// ReadConfig reads the Config of the shim whose state directory is stateDir.
func ReadConfig(stateDir string) (*Config, error) {
	var c Config
	if err := readJSON(ConfigPath(stateDir), &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func statePath(stateDir, name string) string {
	return filepath.Join(stateDir, name)
}
