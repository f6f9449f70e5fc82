package spec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"github.com/hashicorp/nomad/drivers/shared/hostnames"
	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Mount types accepted in Mount.Type.
const (
	MountTypeBind  = "bind"
	MountTypeTmpfs = "tmpfs"
)

// Task paths of Nomad's task directories.
const (
	TaskPathAlloc   = "/alloc"
	TaskPathLocal   = "/local"
	TaskPathSecrets = "/secrets"
)

// propagation options understood by runc on a mount.
var propagationOptions = map[string]bool{
	"private": true, "rprivate": true,
	"slave": true, "rslave": true,
	"shared": true, "rshared": true,
	"unbindable": true, "runbindable": true,
}

// nomadPropagation maps Nomad volume_mount propagation_mode to runc options.
var nomadPropagation = map[string]string{
	"":              "rprivate",
	"private":       "rprivate",
	"host-to-task":  "rslave",
	"bidirectional": "rshared",
}

// defaultMounts returns the standard container filesystems, matching the
// set `runc spec` generates (with /dev/shm sized like Docker's default).
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{
			Destination: "/proc",
			Type:        "proc",
			Source:      "proc",
			Options:     []string{"nosuid", "noexec", "nodev"},
		},
		{
			Destination: "/dev",
			Type:        "tmpfs",
			Source:      "tmpfs",
			Options:     []string{"nosuid", "strictatime", "mode=755", "size=65536k"},
		},
		{
			Destination: "/dev/pts",
			Type:        "devpts",
			Source:      "devpts",
			Options:     []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"},
		},
		{
			Destination: "/dev/shm",
			Type:        "tmpfs",
			Source:      "shm",
			Options:     []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"},
		},
		{
			Destination: "/dev/mqueue",
			Type:        "mqueue",
			Source:      "mqueue",
			Options:     []string{"nosuid", "noexec", "nodev"},
		},
		{
			Destination: "/sys",
			Type:        "sysfs",
			Source:      "sysfs",
			Options:     []string{"nosuid", "noexec", "nodev", "ro"},
		},
		{
			Destination: "/sys/fs/cgroup",
			Type:        "cgroup",
			Source:      "cgroup",
			Options:     []string{"nosuid", "noexec", "nodev", "relatime", "ro"},
		},
	}
}

// bindMount returns an rbind mount of source at target.
func bindMount(source, target string, readonly bool, propagation string) specs.Mount {
	mode := "rw"
	if readonly {
		mode = "ro"
	}
	return specs.Mount{
		Destination: target,
		Type:        "bind",
		Source:      source,
		Options:     []string{"rbind", propagation, mode},
	}
}

// taskDirMounts binds Nomad's alloc, local and secrets directories.
func taskDirMounts(task *drivers.TaskConfig) []specs.Mount {
	td := task.TaskDir()
	return []specs.Mount{
		bindMount(td.SharedAllocDir, TaskPathAlloc, false, "rprivate"),
		bindMount(td.LocalDir, TaskPathLocal, false, "rprivate"),
		bindMount(td.SecretsDir, TaskPathSecrets, false, "rprivate"),
	}
}

// etcMounts returns the /etc/resolv.conf and /etc/hosts mounts.
//
//   - /etc/resolv.conf: when the task carries Nomad DNS settings, a file
//     generated in the task dir from them (falling back to the host's values
//     for what is unset); otherwise the host's resolv.conf, read-only. Skipped
//     when the host has none.
//   - /etc/hosts: with host networking, the host's file read-only; in a
//     Nomad group network with hosts config, the alloc-wide hosts file Nomad
//     tasks share (written once into the alloc dir); in any other network
//     namespace, a file in the task dir with localhost entries and the
//     hostname.
func (b *builder) etcMounts(task *drivers.TaskConfig, net netMode, hostname string) ([]specs.Mount, error) {
	var out []specs.Mount

	if dns := task.DNS; dns != nil && (len(dns.Servers) > 0 || len(dns.Searches) > 0 || len(dns.Options) > 0) {
		p := filepath.Join(task.TaskDir().Dir, "resolv.conf")
		hostConf, err := os.ReadFile(b.hostResolvConf)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dns: reading host %s: %w", b.hostResolvConf, err)
		}
		if err := atomicfile.Write(p, renderResolvConf(hostConf, dns), 0o644); err != nil {
			return nil, fmt.Errorf("dns: writing %s: %w", p, err)
		}
		out = append(out, bindMount(p, "/etc/resolv.conf", true, "rprivate"))
	} else if exists(b.hostResolvConf) {
		out = append(out, bindMount(b.hostResolvConf, "/etc/resolv.conf", true, "rprivate"))
	}

	switch {
	case net.host:
		if exists(b.hostHosts) {
			out = append(out, bindMount(b.hostHosts, "/etc/hosts", true, "rprivate"))
		}
	default:
		m, err := hostnames.GenerateEtcHostsMount(task.AllocDir, task.NetworkIsolation, nil)
		if err != nil {
			return nil, fmt.Errorf("network: generating /etc/hosts in %s: %w", task.AllocDir, err)
		}
		if m != nil {
			out = append(out, bindMount(m.HostPath, "/etc/hosts", m.Readonly, "rprivate"))
			break
		}
		p := filepath.Join(task.TaskDir().Dir, "hosts")
		if err := atomicfile.Write(p, renderHosts(hostname), 0o644); err != nil {
			return nil, fmt.Errorf("network: writing %s: %w", p, err)
		}
		out = append(out, bindMount(p, "/etc/hosts", false, "rprivate"))
	}
	return out, nil
}

// renderResolvConf builds a resolv.conf from Nomad DNS settings, keeping the
// host's nameservers, search domains and options for whatever is unset.
func renderResolvConf(host []byte, dns *drivers.DNSConfig) []byte {
	var servers, searches, options []string
	for _, line := range strings.Split(string(host), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			servers = append(servers, f[1])
		case "search", "domain":
			searches = f[1:]
		case "options":
			options = append(options, f[1:]...)
		}
	}
	if len(dns.Servers) > 0 {
		servers = dns.Servers
	}
	if len(dns.Searches) > 0 {
		searches = dns.Searches
	}
	if len(dns.Options) > 0 {
		options = dns.Options
	}

	var sb strings.Builder
	sb.WriteString("# generated by nomad-driver-ferry from the task's dns settings\n")
	for _, s := range servers {
		fmt.Fprintf(&sb, "nameserver %s\n", s)
	}
	if len(searches) > 0 {
		fmt.Fprintf(&sb, "search %s\n", strings.Join(searches, " "))
	}
	if len(options) > 0 {
		fmt.Fprintf(&sb, "options %s\n", strings.Join(options, " "))
	}
	return []byte(sb.String())
}

// renderHosts builds an /etc/hosts for a task in its own network namespace.
func renderHosts(hostname string) []byte {
	var sb strings.Builder
	sb.WriteString("# generated by nomad-driver-ferry\n")
	sb.WriteString("127.0.0.1\tlocalhost\n")
	sb.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	sb.WriteString("fe00::0\tip6-localnet\n")
	sb.WriteString("ff00::0\tip6-mcastprefix\n")
	sb.WriteString("ff02::1\tip6-allnodes\n")
	sb.WriteString("ff02::2\tip6-allrouters\n")
	if hostname != "" {
		fmt.Fprintf(&sb, "127.0.1.1\t%s\n", hostname)
	}
	return []byte(sb.String())
}

// volumeMounts converts Nomad volume_mount (and CSI) mounts.
func volumeMounts(mounts []*drivers.MountConfig) ([]specs.Mount, error) {
	var out []specs.Mount
	for _, m := range mounts {
		if m == nil {
			continue
		}
		target, err := cleanTarget("volume_mount", m.TaskPath)
		if err != nil {
			return nil, err
		}
		if !filepath.IsAbs(m.HostPath) {
			return nil, fmt.Errorf("volume_mount: host path %q for %q is not absolute; check the volume's source on the client", m.HostPath, m.TaskPath)
		}
		prop, ok := nomadPropagation[m.PropagationMode]
		if !ok {
			return nil, fmt.Errorf("volume_mount: unknown propagation_mode %q for %q; use %q, %q or %q",
				m.PropagationMode, m.TaskPath, "private", "host-to-task", "bidirectional")
		}
		out = append(out, bindMount(filepath.Clean(m.HostPath), target, m.Readonly, prop))
	}
	return out, nil
}

// userMounts converts task config mounts/volumes.
func userMounts(mounts []Mount) ([]specs.Mount, error) {
	var out []specs.Mount
	for _, m := range mounts {
		target, err := cleanTarget("mounts", m.Target)
		if err != nil {
			return nil, err
		}
		mode := "rw"
		if m.Readonly {
			mode = "ro"
		}
		switch m.Type {
		case "", MountTypeBind:
			if !filepath.IsAbs(m.Source) {
				return nil, fmt.Errorf("mounts: source %q for %q is not an absolute path; use an absolute host path", m.Source, m.Target)
			}
			bind := "rbind"
			hasProp := false
			var extra []string
			for _, o := range m.Options {
				switch {
				case o == "bind" || o == "rbind":
					bind = o
				case o == "ro" || o == "rw":
					// Readonly decides.
				case propagationOptions[o]:
					hasProp = true
					extra = append(extra, o)
				default:
					extra = append(extra, o)
				}
			}
			opts := []string{bind}
			if !hasProp {
				opts = append(opts, "rprivate")
			}
			opts = append(opts, extra...)
			opts = append(opts, mode)
			out = append(out, specs.Mount{
				Destination: target,
				Type:        "bind",
				Source:      filepath.Clean(m.Source),
				Options:     opts,
			})
		case MountTypeTmpfs:
			opts := []string{"nosuid", "nodev"}
			for _, o := range m.Options {
				if o == "ro" || o == "rw" {
					continue
				}
				opts = append(opts, o)
			}
			opts = append(opts, mode)
			out = append(out, specs.Mount{
				Destination: target,
				Type:        "tmpfs",
				Source:      "tmpfs",
				Options:     opts,
			})
		default:
			return nil, fmt.Errorf("mounts: unknown type %q for %q; use %q or %q", m.Type, m.Target, MountTypeBind, MountTypeTmpfs)
		}
	}
	return out, nil
}

// cleanTarget checks that a container path is absolute and not "/", and
// returns it cleaned.
func cleanTarget(field, target string) (string, error) {
	if target == "" {
		return "", fmt.Errorf("%s: empty target path; use an absolute path inside the container like %q", field, "/data")
	}
	if !path.IsAbs(target) {
		return "", fmt.Errorf("%s: target %q is not an absolute path; use an absolute path inside the container like %q", field, target, "/"+strings.TrimLeft(target, "./"))
	}
	t := path.Clean(target)
	if t == "/" {
		return "", fmt.Errorf("%s: cannot mount over the container root %q; choose a directory like %q", field, target, "/data")
	}
	return t, nil
}

// rootfsPropagation returns the rootfs propagation needed by the mounts:
// shared mounts need a shared rootfs parent, slave mounts a slave (or
// shared) one. Empty means runc's default.
func rootfsPropagation(mounts []specs.Mount) string {
	prop := ""
	for _, m := range mounts {
		for _, o := range m.Options {
			switch o {
			case "shared", "rshared":
				return "shared"
			case "slave", "rslave":
				prop = "rslave"
			}
		}
	}
	return prop
}

// ParseVolume parses a docker-style volume "host:container[:mode]" where
// mode is "ro" or "rw", optionally followed by a propagation
// ("ro,rslave"). The host path must be absolute.
func ParseVolume(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Mount{}, fmt.Errorf("volumes: %q is not of the form %q", s, "/host/path:/container/path[:ro|rw]")
	}
	host, target := parts[0], parts[1]
	if host == "" {
		return Mount{}, fmt.Errorf("volumes: %q has an empty host path; use %q", s, "/host/path:/container/path[:ro|rw]")
	}
	if !path.IsAbs(host) {
		return Mount{}, fmt.Errorf("volumes: host path %q in %q is relative; use an absolute path, or Nomad host volumes (a group `volume` block with a task `volume_mount`)", host, s)
	}
	t, err := cleanTarget("volumes", target)
	if err != nil {
		return Mount{}, err
	}
	m := Mount{Type: MountTypeBind, Source: path.Clean(host), Target: t}
	if len(parts) == 3 {
		sawMode, sawProp := false, false
		for _, o := range strings.Split(parts[2], ",") {
			switch {
			case o == "ro" || o == "rw":
				if sawMode {
					return Mount{}, fmt.Errorf("volumes: %q sets the access mode twice; use one of %q or %q", s, "ro", "rw")
				}
				sawMode = true
				m.Readonly = o == "ro"
			case propagationOptions[o]:
				if sawProp {
					return Mount{}, fmt.Errorf("volumes: %q sets the propagation twice; use only one", s)
				}
				sawProp = true
				m.Options = append(m.Options, o)
			default:
				return Mount{}, fmt.Errorf("volumes: unknown mode %q in %q; use %q or %q (optionally with a propagation such as %q)", o, s, "ro", "rw", "ro,rslave")
			}
		}
	}
	return m, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
