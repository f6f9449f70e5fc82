package spec

import (
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const mib = 1024 * 1024

// cgroup v1 cpu.shares bounds enforced by the kernel.
const (
	minCPUShares = 2
	maxCPUShares = 262144
)

// memoryNoLimit is Nomad's memory_max value meaning "no hard limit".
const memoryNoLimit = -1

// maskedPaths and readonlyPaths are the `runc spec` defaults, plus
// /sys/devices/virtual/powercap (masked by Docker as well).
var (
	maskedPaths = []string{
		"/proc/acpi",
		"/proc/asound",
		"/proc/kcore",
		"/proc/keys",
		"/proc/latency_stats",
		"/proc/timer_list",
		"/proc/timer_stats",
		"/proc/sched_debug",
		"/proc/scsi",
		"/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus",
		"/proc/fs",
		"/proc/irq",
		"/proc/sys",
		"/proc/sysrq-trigger",
	}
)

// netMode describes how the task is networked.
type netMode struct {
	host bool   // share the host network (and UTS) namespace
	path string // network namespace to join; empty with !host means a new one
}

// networkMode derives the network mode from Nomad's network isolation spec:
// nil or mode "host" shares the host network; a path joins that namespace;
// mode "none" without a path gets a fresh, empty namespace.
func networkMode(ni *drivers.NetworkIsolationSpec) netMode {
	switch {
	case ni == nil || ni.Mode == drivers.NetIsolationModeHost:
		return netMode{host: true}
	case ni.Path != "":
		return netMode{path: ni.Path}
	case ni.Mode == drivers.NetIsolationModeNone:
		return netMode{}
	default:
		return netMode{host: true}
	}
}

// namespaces returns the namespaces to create or join. No user namespace.
func namespaces(net netMode) []specs.LinuxNamespace {
	ns := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
	}
	if !net.host {
		ns = append(ns,
			specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: net.path},
			specs.LinuxNamespace{Type: specs.UTSNamespace},
		)
	}
	return append(ns, specs.LinuxNamespace{Type: specs.MountNamespace})
}

// hostname picks the container hostname: the task's `hostname`, else Nomad's
// group network hostname. It is only valid with a UTS namespace, which host
// networking does not get.
func hostname(in *Input, net netMode) (string, error) {
	if net.host {
		if in.Hostname != "" {
			return "", fmt.Errorf("hostname: %q cannot be set with host networking (the task shares the host's UTS namespace); remove `hostname` or use a group network (network { mode = \"bridge\" })", in.Hostname)
		}
		return "", nil
	}
	if in.Hostname != "" {
		return in.Hostname, nil
	}
	if ni := in.Task.NetworkIsolation; ni != nil && ni.HostsConfig != nil {
		return ni.HostsConfig.Hostname, nil
	}
	return "", nil
}

// resources converts Nomad's task resources to OCI cgroup settings.
//
// Memory follows Nomad (and its docker driver): when memory_max is set, the
// hard limit is max(memory, memory_max) (what Nomad also puts in
// LinuxResources.MemoryLimitBytes) and `memory` becomes the soft limit
// (reservation); memory_max = -1 means no hard limit, only the reservation.
// Otherwise the hard limit is LinuxResources.MemoryLimitBytes, falling back
// to `memory`. CPU shares come from LinuxResources.CPUShares (clamped to the
// cgroup v1 range), quota and period when set, reserved cores as the cpuset.
func resources(r *drivers.Resources) (*specs.LinuxResources, error) {
	out := &specs.LinuxResources{Devices: defaultDeviceRules()}
	if r == nil {
		return out, nil
	}
	lr := r.LinuxResources
	if lr == nil {
		lr = &drivers.LinuxResources{}
	}

	var memMB, memMaxMB int64
	if nr := r.NomadResources; nr != nil {
		memMB, memMaxMB = nr.Memory.MemoryMB, nr.Memory.MemoryMaxMB
	}
	if memMB < 0 || lr.MemoryLimitBytes < 0 {
		return nil, fmt.Errorf("resources: negative memory (%d MiB, limit %d bytes); set `memory` to a positive number of MiB", memMB, lr.MemoryLimitBytes)
	}

	var mem specs.LinuxMemory
	switch {
	case memMaxMB == memoryNoLimit:
		if memMB > 0 {
			mem.Reservation = ptr(memMB * mib)
		}
	case memMaxMB > 0:
		limit := max(memMB, memMaxMB) * mib
		mem.Limit = ptr(limit)
		if memMB > 0 && memMB*mib < limit {
			mem.Reservation = ptr(memMB * mib)
		}
	case lr.MemoryLimitBytes > 0:
		mem.Limit = ptr(lr.MemoryLimitBytes)
	case memMB > 0:
		mem.Limit = ptr(memMB * mib)
	}
	if mem.Limit != nil || mem.Reservation != nil {
		out.Memory = &mem
	}

	var cpu specs.LinuxCPU
	set := false
	if lr.CPUShares > 0 {
		cpu.Shares = ptr(uint64(min(max(lr.CPUShares, minCPUShares), maxCPUShares)))
		set = true
	}
	if lr.CPUQuota > 0 {
		cpu.Quota = ptr(lr.CPUQuota)
		set = true
	}
	if lr.CPUPeriod > 0 {
		cpu.Period = ptr(uint64(lr.CPUPeriod))
		set = true
	}
	if cpus := strings.TrimSpace(lr.CpusetCpus); cpus != "" {
		cpu.Cpus = cpus
		set = true
	}
	if set {
		out.CPU = &cpu
	}
	return out, nil
}

// defaultDeviceRules denies every device and then allows runc's default set
// (libcontainer/specconv.AllowedDevices): mknod of any node, /dev/null,
// zero, full, random, urandom, tty, ptmx, the pts devices and /dev/net/tun.
func defaultDeviceRules() []specs.LinuxDeviceCgroup {
	rule := func(typ string, major, minor int64, access string) specs.LinuxDeviceCgroup {
		r := specs.LinuxDeviceCgroup{Allow: true, Type: typ, Access: access}
		if major >= 0 {
			r.Major = ptr(major)
		}
		if minor >= 0 {
			r.Minor = ptr(minor)
		}
		return r
	}
	const wildcard = -1
	return []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		rule("c", wildcard, wildcard, "m"), // mknod any char device
		rule("b", wildcard, wildcard, "m"), // mknod any block device
		rule("c", 1, 3, "rwm"),             // /dev/null
		rule("c", 1, 5, "rwm"),             // /dev/zero
		rule("c", 1, 7, "rwm"),             // /dev/full
		rule("c", 1, 8, "rwm"),             // /dev/random
		rule("c", 1, 9, "rwm"),             // /dev/urandom
		rule("c", 5, 0, "rwm"),             // /dev/tty
		rule("c", 5, 2, "rwm"),             // /dev/ptmx
		rule("c", 136, wildcard, "rwm"),    // /dev/pts/*
		rule("c", 10, 200, "rwm"),          // /dev/net/tun
	}
}

// devices turns Nomad device mounts into OCI device nodes (created by runc
// in the container) plus matching cgroup allow rules. The host node is
// stat'ed for its type and numbers.
func devices(devs []*drivers.DeviceConfig) ([]specs.LinuxDevice, []specs.LinuxDeviceCgroup, error) {
	var nodes []specs.LinuxDevice
	var rules []specs.LinuxDeviceCgroup
	for _, d := range devs {
		if d == nil {
			continue
		}
		if !path.IsAbs(d.HostPath) {
			return nil, nil, fmt.Errorf("device: host path %q is not absolute; use a path like %q", d.HostPath, "/dev/fuse")
		}
		taskPath := d.TaskPath
		if taskPath == "" {
			taskPath = d.HostPath
		}
		target, err := cleanTarget("device", taskPath)
		if err != nil {
			return nil, nil, err
		}
		access := d.Permissions
		if access == "" {
			access = "rwm"
		}
		if strings.Trim(access, "rwm") != "" {
			return nil, nil, fmt.Errorf("device: permissions %q for %q are invalid; use a combination of %q, %q and %q", d.Permissions, d.HostPath, "r", "w", "m")
		}

		var st unix.Stat_t
		if err := unix.Stat(d.HostPath, &st); err != nil {
			return nil, nil, fmt.Errorf("device: stat %s: %w", d.HostPath, err)
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nil, nil, fmt.Errorf("device: %s is not a character or block device; use a device node path", d.HostPath)
		}
		major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		mode := os.FileMode(st.Mode & 0o777)
		nodes = append(nodes, specs.LinuxDevice{
			Path:     target,
			Type:     typ,
			Major:    major,
			Minor:    minor,
			FileMode: &mode,
			UID:      ptr(uint32(0)),
			GID:      ptr(uint32(0)),
		})
		rules = append(rules, specs.LinuxDeviceCgroup{
			Allow:  true,
			Type:   typ,
			Major:  ptr(major),
			Minor:  ptr(minor),
			Access: access,
		})
	}
	return nodes, rules, nil
}

// seccompProfile returns the seccomp filter for the task. None is applied
// yet (runc's default); a profile would be built here.
func seccompProfile(*Input) (*specs.LinuxSeccomp, error) {
	return nil, nil
}

func ptr[T any](v T) *T { return &v }
