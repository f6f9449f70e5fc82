package plugin

import (
	"fmt"
	"io"
	"path"
	"runtime"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// defaultExecPath is searched for a program without a slash when the
// process has no PATH.
const defaultExecPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// nodeArch is the CPU architecture this node executes natively.
var nodeArch = runtime.GOARCH

// checkEntrypoint tells the task, with an event, when the program its
// container starts is a binary for another architecture: either it runs
// under an emulator, or it cannot run here at all and the task will fail
// with "exec format error". It never fails the task; scripts, programs it
// cannot find and unknown formats get no event.
func (d *Driver) checkEntrypoint(cfg *drivers.TaskConfig, s *specs.Spec) {
	if s == nil || s.Root == nil || s.Process == nil {
		return
	}
	msg, annotations := entrypointNotice(s.Root.Path, s.Process, nodeArch, binfmtDir)
	if msg == "" {
		return
	}
	d.logger.Debug("entrypoint for another architecture", "task", cfg.ID, "message", msg)
	d.emit(cfg, msg, annotations)
}

// entrypointNotice returns the event for the process's program, found in
// rootfs, given the node's architecture and the binfmt_misc handlers
// registered in binfmt; "" when there is nothing to say.
func entrypointNotice(rootfs string, proc *specs.Process, arch, binfmt string) (string, map[string]string) {
	if len(proc.Args) == 0 {
		return "", nil
	}
	prog, head, ok := findExecutable(rootfs, proc.Args[0], proc.Cwd, proc.Env)
	if !ok {
		return "", nil
	}
	binArch, ok := elfArch(head)
	if !ok || binArch == arch {
		return "", nil
	}
	node, bin := "linux/"+arch, "linux/"+binArch
	annotations := map[string]string{"entrypoint": prog, "binary_platform": bin, "node_platform": node}
	handlers, _ := loadBinfmt(binfmt)
	var matched []*binfmtEntry
	for _, h := range handlers {
		if h.matches(prog, head) {
			matched = append(matched, h)
		}
	}
	for _, h := range matched {
		// Without the F flag the kernel opens the interpreter when the
		// program starts, inside the container.
		if h.fixBinary() || existsInRootfs(rootfs, h.Interpreter) {
			annotations["binfmt_handler"] = h.Name
			return fmt.Sprintf("Entrypoint %s is a %s binary; this node is %s and runs it under emulation (binfmt_misc handler %s: %s)",
				prog, bin, node, h.Name, h.Interpreter), annotations
		}
	}
	if len(matched) > 0 {
		h := matched[0]
		annotations["binfmt_handler"] = h.Name
		return fmt.Sprintf("Entrypoint %s is a %s binary; this node is %s and its binfmt_misc handler %s needs the interpreter %s inside the container, which the image lacks: the task will fail to start (register the handler with the F flag, as qemu-user-static does, or use the image for %s)",
			prog, bin, node, h.Name, h.Interpreter, node), annotations
	}
	if runsNatively(arch, binArch) {
		return "", nil
	}
	return fmt.Sprintf("Entrypoint %s is a %s binary; this node is %s and has no binfmt_misc handler for it: the task will fail with \"exec format error\" (register an emulator such as qemu-user-static, or use the image for %s)",
		prog, bin, node, node), annotations
}

// findExecutable finds the program the container runs for argv0 the way
// runc does: as a path when it has a slash (relative to cwd), else in the
// directories of the process's PATH. Symlinks resolve inside rootfs. It
// returns the program's path in the container and its first bytes.
func findExecutable(rootfs, argv0, cwd string, env []string) (string, []byte, bool) {
	if cwd == "" {
		cwd = "/"
	}
	if strings.Contains(argv0, "/") {
		prog := path.Join(cwd, argv0)
		if head, ok := readExecutable(rootfs, prog); ok {
			return prog, head, true
		}
		return "", nil, false
	}
	pathVar := defaultExecPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v // the last one wins, as in the container
		}
	}
	for _, dir := range strings.Split(pathVar, ":") {
		if dir == "" {
			dir = "."
		}
		prog := path.Join(cwd, dir, argv0)
		if head, ok := readExecutable(rootfs, prog); ok {
			return prog, head, true
		}
	}
	return "", nil, false
}

// readExecutable returns the first bytes of the executable regular file at
// prog in the rootfs, following symlinks inside it.
func readExecutable(rootfs, prog string) ([]byte, bool) {
	h, err := pathrs.OpenInRoot(rootfs, prog)
	if err != nil {
		return nil, false
	}
	defer h.Close()
	fi, err := h.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return nil, false
	}
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	head := make([]byte, execHeaderSize)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, false
	}
	return head[:n], true
}

// existsInRootfs reports whether name exists in the rootfs, following
// symlinks inside it.
func existsInRootfs(rootfs, name string) bool {
	if name == "" {
		return false
	}
	h, err := pathrs.OpenInRoot(rootfs, name)
	if err != nil {
		return false
	}
	_ = h.Close()
	return true
}
