package spec

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// knownCaps lists every Linux capability, in kernel numbering order
// (include/uapi/linux/capability.h, CAP_CHOWN=0 … CAP_CHECKPOINT_RESTORE=40).
var knownCaps = [...]string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_DAC_READ_SEARCH",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETPCAP",
	"CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST",
	"CAP_NET_ADMIN",
	"CAP_NET_RAW",
	"CAP_IPC_LOCK",
	"CAP_IPC_OWNER",
	"CAP_SYS_MODULE",
	"CAP_SYS_RAWIO",
	"CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE",
	"CAP_SYS_PACCT",
	"CAP_SYS_ADMIN",
	"CAP_SYS_BOOT",
	"CAP_SYS_NICE",
	"CAP_SYS_RESOURCE",
	"CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG",
	"CAP_MKNOD",
	"CAP_LEASE",
	"CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL",
	"CAP_SETFCAP",
	"CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN",
	"CAP_SYSLOG",
	"CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND",
	"CAP_AUDIT_READ",
	"CAP_PERFMON",
	"CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// defaultCaps is Docker's default capability set (the same list Nomad's
// docker driver assumes, see capabilities.DockerDefaults in Nomad).
var defaultCaps = [...]string{
	"CAP_AUDIT_WRITE",
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_MKNOD",
	"CAP_NET_BIND_SERVICE",
	"CAP_NET_RAW",
	"CAP_SETFCAP",
	"CAP_SETGID",
	"CAP_SETPCAP",
	"CAP_SETUID",
	"CAP_SYS_CHROOT",
}

const capAll = "ALL"

// normalizeCap turns "net_admin", "NET_ADMIN", "cap_net_admin" or
// "CAP_NET_ADMIN" into "CAP_NET_ADMIN", and any spelling of "all" into "ALL".
// ok is false when the name is not a known capability.
func normalizeCap(name string) (string, bool) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == capAll {
		return capAll, true
	}
	if !strings.HasPrefix(n, "CAP_") {
		n = "CAP_" + n
	}
	for _, c := range knownCaps {
		if c == n {
			return n, true
		}
	}
	return "", false
}

// normalizeCapList normalizes a cap_add/cap_drop list. field names the task
// config field for error messages.
func normalizeCapList(field string, names []string) (caps []string, all bool, err error) {
	for _, name := range names {
		n, ok := normalizeCap(name)
		if !ok {
			return nil, false, fmt.Errorf("%s: unknown capability %q; use names like %q or %q, or %q",
				field, name, "NET_ADMIN", "CAP_NET_ADMIN", capAll)
		}
		if n == capAll {
			all = true
			continue
		}
		caps = append(caps, n)
	}
	return caps, all, nil
}

// DefaultCaps is Docker's default capability set, lower case and without
// the CAP_ prefix, as the plugin's allow_caps writes it.
func DefaultCaps() []string {
	out := make([]string, len(defaultCaps))
	for i, c := range defaultCaps {
		out[i] = strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	return out
}

// DisallowedCaps returns the capabilities of cap_add that allow (the
// plugin's allow_caps; "all" allows every one) does not allow, in the
// task's spelling. cap_add = ["ALL"] asks for every capability.
func DisallowedCaps(add, allow []string) ([]string, error) {
	allowed, allowAll, err := normalizeCapList("allow_caps", allow)
	if err != nil || allowAll {
		return nil, err
	}
	ok := map[string]bool{}
	for _, c := range allowed {
		ok[c] = true
	}
	var out []string
	for _, name := range add {
		n, known := normalizeCap(name)
		switch {
		case !known:
			continue // ValidateCaps names it
		case n == capAll:
			for _, c := range knownCaps {
				if !ok[c] {
					return []string{name}, nil
				}
			}
		case !ok[n]:
			out = append(out, name)
		}
	}
	return out, nil
}

// ValidateCaps checks that every entry of cap_add and cap_drop names a known
// Linux capability (with or without the CAP_ prefix, any case) or "ALL".
func ValidateCaps(add, drop []string) error {
	if _, _, err := normalizeCapList("cap_add", add); err != nil {
		return err
	}
	if _, _, err := normalizeCapList("cap_drop", drop); err != nil {
		return err
	}
	return nil
}

// capabilities computes the task's capability set: Docker's defaults, minus
// cap_drop, plus cap_add (so cap_drop=["ALL"] with a short cap_add keeps only
// the added ones). The result is sorted.
func capabilities(add, drop []string) ([]string, error) {
	addCaps, addAll, err := normalizeCapList("cap_add", add)
	if err != nil {
		return nil, err
	}
	dropCaps, dropAll, err := normalizeCapList("cap_drop", drop)
	if err != nil {
		return nil, err
	}

	set := make(map[string]struct{}, len(knownCaps))
	if !dropAll {
		for _, c := range defaultCaps {
			set[c] = struct{}{}
		}
		for _, c := range dropCaps {
			delete(set, c)
		}
	}
	if addAll {
		// Every capability this node can grant: those in the driver's own
		// bounding set (a node may lack some, as a container host often
		// lacks CAP_SYS_RESOURCE), as Docker reads "ALL".
		for i, c := range knownCaps {
			if inBoundingSet(i) {
				set[c] = struct{}{}
			}
		}
	}
	for _, c := range addCaps {
		set[c] = struct{}{}
	}

	if len(set) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out, nil
}

// inBoundingSet reports whether capability number capNum is in this
// process's bounding set.
func inBoundingSet(capNum int) bool {
	r, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(capNum), 0, 0, 0)
	return err == nil && r == 1
}
