package plugin

import (
	"bytes"
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
// container starts is a binary for another architecture (or a script whose
// interpreter is): either it runs under an emulator, or it cannot run here
// at all and the task will fail with "exec format error". It never fails
// the task; programs it cannot find and unknown formats get no event.
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
	cwd := proc.Cwd
	if cwd == "" {
		cwd = "/"
	}
	prog, head, ok := findExecutable(rootfs, proc.Args[0], cwd, proc.Env)
	if !ok {
		return "", nil
	}
	annotations := map[string]string{"entrypoint": prog}
	subject := "Entrypoint " + prog + " is"
	bin := prog
	if interp, ok := scriptInterpreter(head); ok {
		// The kernel runs the interpreter instead, found like a path
		// passed to execve.
		bin = inDir(cwd, interp)
		if head, ok = readExecutable(rootfs, bin); !ok {
			return "", nil
		}
		annotations["interpreter"] = bin
		subject = fmt.Sprintf("Entrypoint %s is a script for %s,", prog, bin)
	}
	binArch, ok := elfArch(head)
	if !ok || binArch == arch {
		return "", nil
	}
	node, platform := "linux/"+arch, "linux/"+binArch
	annotations["binary_platform"], annotations["node_platform"] = platform, node
	subject = fmt.Sprintf("%s a %s binary; this node is %s", subject, platform, node)

	// The kernel hands the binary to the first enabled handler that
	// matches in its list, the one registered last; the list's order is
	// not shown, so every match counts.
	handlers, _ := loadBinfmt(binfmt)
	var matched []*binfmtEntry
	for _, h := range handlers {
		if h.matches(bin, head) {
			matched = append(matched, h)
		}
	}
	if len(matched) == 0 {
		if runsNatively(arch, binArch) {
			return "", nil
		}
		return fmt.Sprintf("%s and has no binfmt_misc handler for it: the task will fail with \"exec format error\" (register an emulator such as qemu-user-static, or use the image for %s)",
			subject, node), annotations
	}
	var names, described, lacking, missing []string
	for _, h := range matched {
		names = append(names, h.Name)
		described = append(described, h.Name+": "+h.Interpreter)
		// Without the F flag the kernel opens the interpreter when the
		// program starts, inside the container.
		if !h.fixBinary() && !existsInRootfs(rootfs, h.Interpreter) {
			lacking = append(lacking, h.Name)
			missing = append(missing, fmt.Sprintf("handler %s has no F flag and its interpreter %s is not in the image", h.Name, h.Interpreter))
		}
	}
	annotations["binfmt_handler"] = strings.Join(names, ",")
	fix := "register the handler with the F flag, as qemu-user-static does, or use the image for " + node
	switch {
	case len(lacking) == 0 && len(matched) == 1:
		return fmt.Sprintf("%s and runs it under emulation (binfmt_misc handler %s)", subject, described[0]), annotations
	case len(lacking) == 0:
		return fmt.Sprintf("%s and runs it under emulation (binfmt_misc handlers %s)", subject, strings.Join(described, ", ")), annotations
	case len(matched) == 1:
		h := matched[0]
		return fmt.Sprintf("%s and its binfmt_misc handler %s needs the interpreter %s inside the container, which the image lacks: the task will fail to start (%s)",
			subject, h.Name, h.Interpreter, fix), annotations
	}
	fate := "will fail to start"
	if len(lacking) < len(matched) {
		fate = "fails to start if the kernel uses " + strings.Join(lacking, " or ")
	}
	return fmt.Sprintf("%s and binfmt_misc handlers %s match it, of which the kernel uses the one registered last; %s: the task %s (%s)",
		subject, strings.Join(described, ", "), strings.Join(missing, "; "), fate, fix), annotations
}

// scriptInterpreter returns the interpreter named by the "#!" line the
// executable starts with, as the kernel reads it: the first word after
// "#!", within the first line or the header the kernel reads.
func scriptInterpreter(head []byte) (string, bool) {
	line, ok := bytes.CutPrefix(head, []byte("#!"))
	if !ok {
		return "", false
	}
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	} else if len(head) == execHeaderSize {
		// The line goes on beyond the header: the kernel takes the name
		// only if it ends within.
		line = line[:len(line)-1]
		if !bytes.ContainsAny(bytes.TrimLeft(line, " \t"), " \t\x00") {
			return "", false
		}
	}
	name := bytes.TrimLeft(line, " \t")
	if i := bytes.IndexAny(name, " \t\x00"); i >= 0 {
		name = name[:i]
	}
	return string(name), len(name) > 0
}

// inDir returns name as the kernel resolves it in directory dir: as is
// when absolute, else relative to dir.
func inDir(dir, name string) string {
	if path.IsAbs(name) {
		return path.Clean(name)
	}
	return path.Join(dir, name)
}

// findExecutable finds the program the container runs for argv0 the way
// runc does: as a path when it has a slash (relative to cwd unless
// absolute), else in the directories of the process's PATH. Symlinks
// resolve inside rootfs. It returns the program's path in the container
// and its first bytes.
func findExecutable(rootfs, argv0, cwd string, env []string) (string, []byte, bool) {
	if strings.Contains(argv0, "/") {
		prog := inDir(cwd, argv0)
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
		prog := path.Join(inDir(cwd, dir), argv0)
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
