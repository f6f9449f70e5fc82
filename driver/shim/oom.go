package shim

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const cgroupRoot = "/sys/fs/cgroup"

// oomCounter reads the OOM kill counter of the container's memory cgroup:
// memory.oom_control on cgroup v1, memory.events on cgroup v2.
type oomCounter struct {
	file string // memory.oom_control or memory.events
}

// newOOMCounter finds the memory cgroup of the container whose init is
// pid, from /proc/<pid>/cgroup, falling back to linux.cgroupsPath of the
// bundle's config.json.
func newOOMCounter(pid int, bundle string) (*oomCounter, error) {
	v2 := isUnified()
	dir, err := memoryCgroupOfPid(pid, v2)
	if err != nil {
		var specErr error
		dir, specErr = memoryCgroupOfBundle(bundle, v2)
		if specErr != nil {
			return nil, fmt.Errorf("find memory cgroup: %w; %w", err, specErr)
		}
	}
	name := "memory.oom_control"
	if v2 {
		name = "memory.events"
	}
	return &oomCounter{file: filepath.Join(dir, name)}, nil
}

// read returns the number of OOM kills in the cgroup.
func (c *oomCounter) read() (uint64, error) {
	f, err := os.Open(c.file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == "oom_kill" {
			return strconv.ParseUint(fields[1], 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no oom_kill in %s", c.file)
}

func isUnified() bool {
	_, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	return err == nil
}

// memoryCgroupOfPid returns the memory cgroup directory of pid.
func memoryCgroupOfPid(pid int, v2 bool) (string, error) {
	rel, err := cgroupOf(fmt.Sprintf("/proc/%d/cgroup", pid), v2)
	if err != nil {
		return "", err
	}
	return cgroupDir(rel, v2)
}

// memoryCgroupOfBundle returns the memory cgroup directory named by
// linux.cgroupsPath in the bundle's config.json. A relative path is taken
// relative to the shim's own cgroup, where runc places it.
func memoryCgroupOfBundle(bundle string, v2 bool) (string, error) {
	var spec specs.Spec
	if err := readJSON(filepath.Join(bundle, "config.json"), &spec); err != nil {
		return "", err
	}
	if spec.Linux == nil || spec.Linux.CgroupsPath == "" {
		return "", errors.New("config.json has no linux.cgroupsPath")
	}
	p := spec.Linux.CgroupsPath
	if strings.Contains(p, ":") {
		return "", fmt.Errorf("systemd cgroupsPath %q is not supported", p)
	}
	if !filepath.IsAbs(p) {
		self, err := cgroupOf("/proc/self/cgroup", v2)
		if err != nil {
			return "", err
		}
		p = filepath.Join(self, p)
	}
	return cgroupDir(p, v2)
}

// cgroupOf returns the memory cgroup path (v1) or unified path (v2) listed
// in a /proc/<pid>/cgroup file.
func cgroupOf(file string, v2 bool) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if v2 && parts[0] == "0" && parts[1] == "" {
			return parts[2], nil
		}
		if !v2 {
			for _, c := range strings.Split(parts[1], ",") {
				if c == "memory" {
					return parts[2], nil
				}
			}
		}
	}
	return "", fmt.Errorf("no memory cgroup in %s", file)
}

// cgroupDir maps a cgroup path to its directory under the mounted
// hierarchy.
func cgroupDir(rel string, v2 bool) (string, error) {
	if v2 {
		return filepath.Join(cgroupRoot, rel), nil
	}
	mnt, root, err := memoryMount()
	if err != nil {
		return "", err
	}
	if root != "/" {
		trimmed := strings.TrimPrefix(rel, root)
		if trimmed != rel {
			rel = trimmed
		}
	}
	return filepath.Join(mnt, rel), nil
}

// memoryMount finds the mount point and root of the cgroup v1 memory
// hierarchy in /proc/self/mountinfo.
func memoryMount() (mountPoint, root string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 || fields[sep+1] != "cgroup" {
			continue
		}
		for _, o := range strings.Split(fields[sep+3], ",") {
			if o == "memory" {
				return fields[4], fields[3], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	return filepath.Join(cgroupRoot, "memory"), "/", nil
}
