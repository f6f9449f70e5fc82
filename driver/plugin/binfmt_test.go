package plugin

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
)

// archBinaries holds testdata/archinfo built (static, CGO off) for each
// arch, in one directory per run of the tests (removed by TestMain).
var archBinaries = struct {
	sync.Mutex
	dir   string
	built map[string]string
}{built: map[string]string{}}

// archBinary returns the path of archinfo built for arch.
func archBinary(t *testing.T, arch string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is needed to build test binaries: %v", err)
	}
	archBinaries.Lock()
	defer archBinaries.Unlock()
	if p, ok := archBinaries.built[arch]; ok {
		return p
	}
	if archBinaries.dir == "" {
		dir, err := os.MkdirTemp("", "ferry-archinfo-")
		must.NoError(t, err)
		archBinaries.dir = dir
	}
	bin := filepath.Join(archBinaries.dir, "archinfo-"+arch)
	build := exec.Command(goBin, "build", "-o", bin, "./testdata/archinfo")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build archinfo for %s: %v\n%s", arch, err, out)
	}
	archBinaries.built[arch] = bin
	return bin
}

func headOf(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	must.NoError(t, err)
	if len(b) > execHeaderSize {
		b = b[:execHeaderSize]
	}
	return b
}

func TestElfArch_RealBinaries(t *testing.T) {
	// Little and big endian, 32 and 64 bits.
	for _, arch := range []string{"amd64", "386", "arm64", "arm", "riscv64", "s390x"} {
		t.Run(arch, func(t *testing.T) {
			got, ok := elfArch(headOf(t, archBinary(t, arch)))
			must.True(t, ok)
			must.Eq(t, arch, got)
		})
	}
}

func TestElfArch_NotELF(t *testing.T) {
	for name, head := range map[string][]byte{
		"script":  []byte("#!/bin/sh\necho hi\n"),
		"empty":   nil,
		"short":   []byte("\x7fELF\x02\x01"),
		"garbage": bytes.Repeat([]byte{0xff}, 64),
	} {
		_, ok := elfArch(head)
		must.False(t, ok, must.Sprint(name))
	}
	// An ELF header for a machine Go has no name for.
	head := bytes.Clone(headOf(t, archBinary(t, "amd64")))
	head[18], head[19] = 0x34, 0x12
	_, ok := elfArch(head)
	must.False(t, ok)
}

func TestRunsNatively(t *testing.T) {
	must.True(t, runsNatively("amd64", "amd64"))
	must.True(t, runsNatively("amd64", "386"))
	must.True(t, runsNatively("arm64", "arm"))
	must.False(t, runsNatively("amd64", "arm64"))
	must.False(t, runsNatively("arm64", "amd64"))
	must.False(t, runsNatively("amd64", "riscv64"))
	must.False(t, runsNatively("riscv64", "386"))
}

// qemuRISCV64 is the handler qemu's binfmt script registers for riscv64.
const qemuRISCV64 = `enabled
interpreter /usr/bin/qemu-riscv64
flags: OC
offset 0
magic 7f454c460201010000000000000000000200f300
mask ffffffffffffff00fffffffffffffffffeffffff
`

func TestParseBinfmtEntry_Real(t *testing.T) {
	// Copied from /proc/sys/fs/binfmt_misc on a node with Debian's
	// qemu-user-static.
	b, err := os.ReadFile("testdata/binfmt_misc/qemu-aarch64")
	must.NoError(t, err)
	e, err := parseBinfmtEntry("qemu-aarch64", b)
	must.NoError(t, err)
	must.True(t, e.Enabled)
	must.Eq(t, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", e.Interpreter)
	must.Eq(t, "PF", e.Flags)
	must.True(t, e.fixBinary())
	must.Eq(t, 0, e.Offset)
	must.Eq(t, "7f454c460201010000000000000000000200b700", hex.EncodeToString(e.Magic))
	must.Eq(t, "ffffffffffffff00fffffffffffffffffeffffff", hex.EncodeToString(e.Mask))

	must.True(t, e.matches("/archinfo", headOf(t, archBinary(t, "arm64"))))
	for _, arch := range []string{"amd64", "riscv64", "arm", "386", "s390x"} {
		must.False(t, e.matches("/archinfo", headOf(t, archBinary(t, arch))), must.Sprint(arch))
	}
	must.False(t, e.matches("/script", []byte("#!/bin/sh\n")))
}

func TestParseBinfmtEntry_Synthetic(t *testing.T) {
	riscv, err := parseBinfmtEntry("qemu-riscv64", []byte(qemuRISCV64))
	must.NoError(t, err)
	must.False(t, riscv.fixBinary())
	must.True(t, riscv.matches("/archinfo", headOf(t, archBinary(t, "riscv64"))))
	must.False(t, riscv.matches("/archinfo", headOf(t, archBinary(t, "arm64"))))

	disabled, err := parseBinfmtEntry("off", []byte("disabled\n"+qemuRISCV64[len("enabled\n"):]))
	must.NoError(t, err)
	must.False(t, disabled.Enabled)
	must.False(t, disabled.matches("/archinfo", headOf(t, archBinary(t, "riscv64"))))

	// Selected by name: everything after the last dot of the path.
	ext, err := parseBinfmtEntry("wine", []byte("enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n"))
	must.NoError(t, err)
	must.Eq(t, "exe", ext.Extension)
	must.Eq(t, "", ext.Flags)
	must.True(t, ext.matches("/app/run.exe", nil))
	must.False(t, ext.matches("/app/run", nil))
	must.False(t, ext.matches("/app.exe/run", nil))

	// A magic at an offset, without a mask; beyond the end of a short
	// file the kernel sees zeros.
	off, err := parseBinfmtEntry("tail", []byte("enabled\ninterpreter /x\nflags: F\noffset 4\nmagic 41420000\n"))
	must.NoError(t, err)
	must.Eq(t, 4, off.Offset)
	must.True(t, off.matches("/p", []byte("....AB")))
	must.False(t, off.matches("/p", []byte("....AC")))
	must.False(t, off.matches("/p", []byte("AB")))

	for _, bad := range []string{"", "maybe\n", "enabled\ninterpreter /x\n", "enabled\nmagic zz\n", "enabled\noffset x\nmagic 00\n"} {
		_, err := parseBinfmtEntry("bad", []byte(bad))
		must.Error(t, err, must.Sprintf("%q", bad))
	}
}

func TestLoadBinfmt(t *testing.T) {
	entries, err := loadBinfmt("testdata/binfmt_misc")
	must.NoError(t, err)
	must.Len(t, 1, entries)
	must.Eq(t, "qemu-aarch64", entries[0].Name)

	// More handlers, one unreadable as a handler: the rest still count.
	dir := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(dir, "status"), []byte("enabled\n"), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "register"), nil, 0o200))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "qemu-riscv64"), []byte(qemuRISCV64), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "broken"), []byte("what\n"), 0o644))
	b, err := os.ReadFile("testdata/binfmt_misc/qemu-aarch64")
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(dir, "qemu-aarch64"), b, 0o644))
	entries, err = loadBinfmt(dir)
	must.NoError(t, err)
	must.Len(t, 2, entries)
	must.Eq(t, "qemu-aarch64", entries[0].Name)
	must.Eq(t, "qemu-riscv64", entries[1].Name)

	// binfmt_misc disabled as a whole, or not mounted: no handler runs.
	must.NoError(t, os.WriteFile(filepath.Join(dir, "status"), []byte("disabled\n"), 0o644))
	entries, err = loadBinfmt(dir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
	entries, err = loadBinfmt(t.TempDir())
	must.NoError(t, err)
	must.SliceEmpty(t, entries)
}

// foreignRootfs is a rootfs with programs for several architectures.
func foreignRootfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	put := func(name, src string, mode os.FileMode) {
		p := filepath.Join(root, name)
		must.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		b, err := os.ReadFile(src)
		must.NoError(t, err)
		must.NoError(t, os.WriteFile(p, b, mode))
	}
	link := func(name, target string) {
		p := filepath.Join(root, name)
		must.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must.NoError(t, os.Symlink(target, p))
	}
	put("bin/archprint", archBinary(t, "riscv64"), 0o755)
	put("usr/bin/arm", archBinary(t, "arm64"), 0o755)
	link("usr/local/bin/armlink", "/usr/bin/arm") // absolute: inside the rootfs
	put("bin/native", archBinary(t, "amd64"), 0o755)
	put("bin/compat", archBinary(t, "386"), 0o755)
	put("bin/noexec", archBinary(t, "riscv64"), 0o644)
	must.NoError(t, os.WriteFile(filepath.Join(root, "bin/script"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	// A symlink to a host path resolves inside the rootfs, where there
	// is nothing.
	outside := filepath.Join(t.TempDir(), "host-riscv")
	b, err := os.ReadFile(archBinary(t, "riscv64"))
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(outside, b, 0o755))
	link("bin/escape", outside)
	link("bin/up", "../../../../../../../.."+outside)
	return root
}

func TestEntrypointNotice(t *testing.T) {
	root := foreignRootfs(t)
	withF := "testdata/binfmt_misc"
	proc := func(args ...string) *specs.Process {
		return &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/usr/local/bin:/bin"}}
	}

	msg, ann := entrypointNotice(root, proc("/bin/archprint"), "amd64", withF)
	must.Eq(t, `Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and has no binfmt_misc handler for it: the task will fail with "exec format error" (register an emulator such as qemu-user-static, or use the image for linux/amd64)`, msg)
	must.Eq(t, map[string]string{"entrypoint": "/bin/archprint", "binary_platform": "linux/riscv64", "node_platform": "linux/amd64"}, ann)

	// Found in PATH, through an absolute symlink inside the rootfs.
	msg, ann = entrypointNotice(root, proc("armlink", "-v"), "amd64", withF)
	must.Eq(t, "Entrypoint /usr/local/bin/armlink is a linux/arm64 binary; this node is linux/amd64 and runs it under emulation (binfmt_misc handler qemu-aarch64: /usr/libexec/qemu-binfmt/aarch64-binfmt-P)", msg)
	must.Eq(t, "qemu-aarch64", ann["binfmt_handler"])

	// Relative to the working directory.
	p := proc("./archprint")
	p.Cwd = "/bin"
	msg, _ = entrypointNotice(root, p, "amd64", withF)
	must.StrHasPrefix(t, "Entrypoint /bin/archprint is a linux/riscv64 binary", msg)

	// The same program on a riscv64 node is native.
	msg, _ = entrypointNotice(root, proc("archprint"), "riscv64", withF)
	must.Eq(t, "", msg)

	for _, args := range [][]string{
		{"/bin/native"}, // this node's own
		{"/bin/compat"}, // 32-bit x86 on amd64
		{"/bin/script"}, // not ELF
		{"missing"},     // not found
		{"/bin/noexec"}, // not executable: runc fails otherwise
		{"/bin/escape"}, // a host file behind a symlink
		{"/bin/up"},     // the same, climbing
		{"/usr/bin"},    // a directory
		{""},            // nothing
	} {
		msg, _ := entrypointNotice(root, proc(args...), "amd64", withF)
		must.Eq(t, "", msg, must.Sprintf("%q", args))
	}
	msg, _ = entrypointNotice(root, &specs.Process{Cwd: "/"}, "amd64", withF)
	must.Eq(t, "", msg)

	// A handler without the F flag needs its interpreter in the rootfs.
	noF := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(noF, "status"), []byte("enabled\n"), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(noF, "qemu-riscv64"), []byte(qemuRISCV64), 0o644))
	msg, ann = entrypointNotice(root, proc("archprint"), "amd64", noF)
	must.Eq(t, "Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and its binfmt_misc handler qemu-riscv64 needs the interpreter /usr/bin/qemu-riscv64 inside the container, which the image lacks: the task will fail to start (register the handler with the F flag, as qemu-user-static does, or use the image for linux/amd64)", msg)
	must.Eq(t, "qemu-riscv64", ann["binfmt_handler"])
	must.NoError(t, os.WriteFile(filepath.Join(root, "usr/bin/qemu-riscv64"), []byte("emulator"), 0o755))
	msg, _ = entrypointNotice(root, proc("archprint"), "amd64", noF)
	must.Eq(t, "Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and runs it under emulation (binfmt_misc handler qemu-riscv64: /usr/bin/qemu-riscv64)", msg)

	// Without binfmt_misc at all.
	msg, _ = entrypointNotice(root, proc("armlink"), "amd64", t.TempDir())
	must.StrContains(t, msg, "is a linux/arm64 binary; this node is linux/amd64 and has no binfmt_misc handler for it")
}

func TestEntrypointNotice_AbsolutePathsIgnoreTheWorkingDirectory(t *testing.T) {
	root := foreignRootfs(t)
	must.NoError(t, os.MkdirAll(filepath.Join(root, "app"), 0o755))
	withF := "testdata/binfmt_misc"

	p := &specs.Process{Args: []string{"/bin/archprint"}, Cwd: "/app"}
	msg, _ := entrypointNotice(root, p, "amd64", withF)
	must.StrHasPrefix(t, "Entrypoint /bin/archprint is a linux/riscv64 binary", msg)

	// Absolute directories of PATH, and a relative one.
	p = &specs.Process{Args: []string{"armlink"}, Cwd: "/app", Env: []string{"PATH=/usr/local/bin:/bin"}}
	msg, _ = entrypointNotice(root, p, "amd64", withF)
	must.StrHasPrefix(t, "Entrypoint /usr/local/bin/armlink is a linux/arm64 binary", msg)
	p = &specs.Process{Args: []string{"archprint"}, Cwd: "/app", Env: []string{"PATH=../bin"}}
	msg, _ = entrypointNotice(root, p, "amd64", withF)
	must.StrHasPrefix(t, "Entrypoint /bin/archprint is a linux/riscv64 binary", msg)
}

func TestEntrypointNotice_SeveralHandlers(t *testing.T) {
	// The kernel uses the first match in a list whose order it does not
	// show: every matching handler is named, and emulation is only
	// promised when each of them works.
	root := foreignRootfs(t)
	dir := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(dir, "status"), []byte("enabled\n"), 0o644))
	withF := strings.Replace(qemuRISCV64, "flags: OC", "flags: OCF", 1)
	must.NoError(t, os.WriteFile(filepath.Join(dir, "qemu-riscv64"), []byte(withF), 0o644))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "riscv-static"), []byte(strings.Replace(withF, "qemu-riscv64\n", "qemu-riscv64-static\n", 1)), 0o644))
	proc := &specs.Process{Args: []string{"/bin/archprint"}, Cwd: "/"}

	msg, ann := entrypointNotice(root, proc, "amd64", dir)
	must.Eq(t, "Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and runs it under emulation (binfmt_misc handlers qemu-riscv64: /usr/bin/qemu-riscv64, riscv-static: /usr/bin/qemu-riscv64-static)", msg)
	must.Eq(t, "qemu-riscv64,riscv-static", ann["binfmt_handler"])

	// One of them needs its interpreter in the image, which lacks it.
	must.NoError(t, os.WriteFile(filepath.Join(dir, "qemu-riscv64"), []byte(qemuRISCV64), 0o644))
	msg, _ = entrypointNotice(root, proc, "amd64", dir)
	must.Eq(t, "Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and binfmt_misc handlers qemu-riscv64: /usr/bin/qemu-riscv64, riscv-static: /usr/bin/qemu-riscv64-static match it, of which the kernel uses the one registered last; handler qemu-riscv64 has no F flag and its interpreter /usr/bin/qemu-riscv64 is not in the image: the task fails to start if the kernel uses qemu-riscv64 (register the handler with the F flag, as qemu-user-static does, or use the image for linux/amd64)", msg)

	// A disabled handler is never used.
	disabled := "disabled\n" + qemuRISCV64[len("enabled\n"):]
	must.NoError(t, os.WriteFile(filepath.Join(dir, "qemu-riscv64"), []byte(disabled), 0o644))
	msg, ann = entrypointNotice(root, proc, "amd64", dir)
	must.Eq(t, "Entrypoint /bin/archprint is a linux/riscv64 binary; this node is linux/amd64 and runs it under emulation (binfmt_misc handler riscv-static: /usr/bin/qemu-riscv64-static)", msg)
	must.Eq(t, "riscv-static", ann["binfmt_handler"])
}

func TestEntrypointNotice_Script(t *testing.T) {
	// The kernel runs a script's "#!" interpreter: that is the binary
	// that counts.
	root := foreignRootfs(t)
	script := func(name, content string) {
		must.NoError(t, os.WriteFile(filepath.Join(root, name), []byte(content), 0o755))
	}
	script("bin/rv-script", "#! /bin/archprint -x\necho hi\n")
	script("bin/rel-script", "#!archprint\n")
	script("bin/native-script", "#!/bin/native\n")
	script("bin/missing-script", "#!/bin/nothing\n")
	script("bin/noexec-script", "#!/bin/noexec\n")
	script("bin/chain", "#!/bin/rv-script\n")
	proc := func(arg, cwd string) *specs.Process { return &specs.Process{Args: []string{arg}, Cwd: cwd} }
	withF := "testdata/binfmt_misc"

	msg, ann := entrypointNotice(root, proc("/bin/rv-script", "/"), "amd64", withF)
	must.Eq(t, `Entrypoint /bin/rv-script is a script for /bin/archprint, a linux/riscv64 binary; this node is linux/amd64 and has no binfmt_misc handler for it: the task will fail with "exec format error" (register an emulator such as qemu-user-static, or use the image for linux/amd64)`, msg)
	must.Eq(t, map[string]string{"entrypoint": "/bin/rv-script", "interpreter": "/bin/archprint", "binary_platform": "linux/riscv64", "node_platform": "linux/amd64"}, ann)

	// A relative interpreter is found from the working directory.
	msg, _ = entrypointNotice(root, proc("./rel-script", "/bin"), "amd64", withF)
	must.StrHasPrefix(t, "Entrypoint /bin/rel-script is a script for /bin/archprint, a linux/riscv64 binary", msg)
	msg, _ = entrypointNotice(root, proc("/bin/rv-script", "/"), "riscv64", withF)
	must.Eq(t, "", msg)

	// Nothing to say: a native interpreter, one that cannot run, and a
	// script for a script (one "#!" line is followed).
	for _, p := range []string{"/bin/native-script", "/bin/missing-script", "/bin/noexec-script", "/bin/chain"} {
		msg, _ := entrypointNotice(root, proc(p, "/"), "amd64", withF)
		must.Eq(t, "", msg, must.Sprint(p))
	}
}

func TestScriptInterpreter(t *testing.T) {
	for head, want := range map[string]string{
		"#!/bin/sh\n":                  "/bin/sh",
		"#! \t/usr/bin/env  python3\n": "/usr/bin/env",
		"#!/bin/sh":                    "/bin/sh",
		"#!/bin/bash\r\n":              "/bin/bash\r",
		"#!/x\x00y\n":                  "/x",
	} {
		got, ok := scriptInterpreter([]byte(head))
		must.True(t, ok, must.Sprintf("%q", head))
		must.Eq(t, want, got)
	}
	long := "#!/" + strings.Repeat("a", execHeaderSize)
	for _, head := range []string{"", "#", "#!", "#!  \n/bin/sh\n", "\x7fELF", long[:execHeaderSize]} {
		_, ok := scriptInterpreter([]byte(head))
		must.False(t, ok, must.Sprintf("%q", head))
	}
	// A name that ends within the header counts, whatever follows.
	got, ok := scriptInterpreter([]byte(("#!/bin/sh " + strings.Repeat("a", execHeaderSize))[:execHeaderSize]))
	must.True(t, ok)
	must.Eq(t, "/bin/sh", got)
}
