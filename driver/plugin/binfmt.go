package plugin

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// binfmtDir is where the kernel lists the binfmt_misc handlers: the
// emulators (such as qemu-user-static) that run binaries of other
// architectures.
const binfmtDir = "/proc/sys/fs/binfmt_misc"

// execHeaderSize is how much of a file the kernel reads to pick the loader
// of an executable (BINPRM_BUF_SIZE); binfmt_misc magics lie within it.
const execHeaderSize = 256

// elfArch returns the architecture of an ELF executable from its first
// bytes, named like GOARCH (amd64, arm64, riscv64, ppc64le, ...). ok is false
// when head is not ELF or its machine is not one Go names.
func elfArch(head []byte) (arch string, ok bool) {
	if len(head) < 20 || !bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return "", false
	}
	class, data := elf.Class(head[elf.EI_CLASS]), elf.Data(head[elf.EI_DATA])
	var order binary.ByteOrder
	switch data {
	case elf.ELFDATA2LSB:
		order = binary.LittleEndian
	case elf.ELFDATA2MSB:
		order = binary.BigEndian
	default:
		return "", false
	}
	is64 := class == elf.ELFCLASS64
	le := data == elf.ELFDATA2LSB
	switch elf.Machine(order.Uint16(head[18:20])) {
	case elf.EM_386:
		return "386", true
	case elf.EM_X86_64:
		return "amd64", true
	case elf.EM_ARM:
		if le {
			return "arm", true
		}
		return "armbe", true
	case elf.EM_AARCH64:
		if le {
			return "arm64", true
		}
		return "arm64be", true
	case elf.EM_RISCV:
		if is64 {
			return "riscv64", true
		}
		return "riscv", true
	case elf.EM_PPC64:
		if le {
			return "ppc64le", true
		}
		return "ppc64", true
	case elf.EM_PPC:
		return "ppc", true
	case elf.EM_S390:
		if is64 {
			return "s390x", true
		}
		return "s390", true
	case elf.EM_MIPS:
		switch {
		case is64 && le:
			return "mips64le", true
		case is64:
			return "mips64", true
		case le:
			return "mipsle", true
		}
		return "mips", true
	case elf.EM_LOONGARCH:
		return "loong64", true
	case elf.EM_SPARCV9:
		return "sparc64", true
	case elf.EM_SPARC:
		return "sparc", true
	}
	return "", false
}

// runsNatively reports whether a kernel for nodeArch runs binaries for arch
// without an emulator. A 64-bit x86 kernel runs 32-bit x86 binaries; an
// arm64 one may run 32-bit arm binaries (when the CPU can), which counts
// as native so as not to warn about binaries that may well run.
func runsNatively(nodeArch, arch string) bool {
	if arch == nodeArch {
		return true
	}
	switch nodeArch {
	case "amd64":
		return arch == "386"
	case "arm64":
		return arch == "arm"
	}
	return false
}

// binfmtEntry is one binfmt_misc handler, as the kernel shows it in
// /proc/sys/fs/binfmt_misc/<name>.
type binfmtEntry struct {
	Name        string
	Enabled     bool
	Interpreter string
	Flags       string
	// Offset, Magic and Mask select files by their first bytes; Extension
	// by their name instead.
	Offset    int
	Magic     []byte
	Mask      []byte
	Extension string
}

// fixBinary reports the F flag: the kernel opened the interpreter when the
// handler was registered, so it works inside containers whose rootfs does
// not have it.
func (e *binfmtEntry) fixBinary() bool { return strings.Contains(e.Flags, "F") }

// matches reports whether the kernel would hand the executable at path
// (as passed to execve), whose first bytes are head, to this handler.
func (e *binfmtEntry) matches(path string, head []byte) bool {
	if !e.Enabled {
		return false
	}
	if e.Magic == nil {
		// The kernel compares everything after the last dot of the
		// path.
		i := strings.LastIndexByte(path, '.')
		return e.Extension != "" && i >= 0 && path[i+1:] == e.Extension
	}
	// The kernel reads a fixed-size header, zero beyond the end of a
	// short file.
	buf := make([]byte, execHeaderSize)
	copy(buf, head)
	if e.Offset < 0 || e.Offset+len(e.Magic) > len(buf) {
		return false
	}
	for i, m := range e.Magic {
		diff := buf[e.Offset+i] ^ m
		if i < len(e.Mask) {
			diff &= e.Mask[i]
		}
		if diff != 0 {
			return false
		}
	}
	return true
}

// parseBinfmtEntry reads the content of a handler's file.
func parseBinfmtEntry(name string, content []byte) (*binfmtEntry, error) {
	e := &binfmtEntry{Name: name}
	lines := strings.Split(strings.TrimRight(string(content), "\n"), "\n")
	switch strings.TrimSpace(lines[0]) {
	case "enabled":
		e.Enabled = true
	case "disabled":
	default:
		return nil, fmt.Errorf("binfmt_misc handler %s: first line %q is neither enabled nor disabled", name, lines[0])
	}
	for _, line := range lines[1:] {
		key, value, _ := strings.Cut(line, " ")
		value = strings.TrimSpace(value)
		var err error
		switch key {
		case "interpreter":
			e.Interpreter = value
		case "flags:":
			e.Flags = value
		case "offset":
			e.Offset, err = strconv.Atoi(value)
		case "magic":
			e.Magic, err = hex.DecodeString(value)
		case "mask":
			e.Mask, err = hex.DecodeString(value)
		case "extension":
			e.Extension = strings.TrimPrefix(value, ".")
		}
		if err != nil {
			return nil, fmt.Errorf("binfmt_misc handler %s: %s: %w", name, key, err)
		}
	}
	if e.Magic == nil && e.Extension == "" {
		return nil, fmt.Errorf("binfmt_misc handler %s has neither magic nor extension", name)
	}
	return e, nil
}

// loadBinfmt returns the handlers registered in dir (binfmtDir), sorted by
// name: the order the kernel tries them in (the one registered last first)
// is not shown. None are when binfmt_misc is not mounted or disabled as a
// whole. Entries that cannot be read or parsed are skipped.
func loadBinfmt(dir string) ([]*binfmtEntry, error) {
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(string(status)) != "enabled" {
		return nil, nil
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var entries []*binfmtEntry
	for _, f := range files {
		if name := f.Name(); name != "status" && name != "register" && f.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				continue
			}
			if e, err := parseBinfmtEntry(name, b); err == nil {
				entries = append(entries, e)
			}
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}
