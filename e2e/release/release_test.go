// Package release tests what `make release` ships: no cluster needed, so it
// is a package of its own, apart from the e2e package's dev cluster.
package release

import (
	"archive/zip"
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// version has build metadata, as the development versions do.
const version = "1.2.3-test.1+release"

var (
	binaries = []string{"nomad-driver-ferry", "ferry-companion"}
	machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	for dir := filepath.Dir(file); ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "GNUmakefile")); err == nil {
			return dir
		}
		if dir == filepath.Dir(dir) {
			t.Fatalf("no GNUmakefile above %s", file)
		}
	}
}

func TestRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries")
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "-C", repoRoot(t), "release", "RELEASE_DIR="+dir, "VERSION="+version)
	// Not the settings of a make this test may run under.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "MAKEFLAGS=") || strings.HasPrefix(kv, "MFLAGS=") || strings.HasPrefix(kv, "MAKELEVEL=")
	})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	t.Logf("make release:\n%s", out)

	sums := readSums(t, filepath.Join(dir, "SHA256SUMS"))
	var want []string
	for _, name := range binaries {
		for arch := range machines {
			want = append(want, fmt.Sprintf("%s_%s_linux_%s.zip", name, version, arch))
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	wantFiles := append(slices.Clone(want), "SHA256SUMS", "THIRD_PARTY_LICENSES")
	slices.Sort(got)
	slices.Sort(wantFiles)
	if !slices.Equal(got, wantFiles) {
		t.Fatalf("%s holds %q, want %q", dir, got, wantFiles)
	}
	for _, f := range append(slices.Clone(want), "THIRD_PARTY_LICENSES") {
		if _, ok := sums[f]; !ok {
			t.Errorf("SHA256SUMS does not list %s", f)
		}
	}
	for f, sum := range sums {
		if d := digest(t, filepath.Join(dir, f)); d != sum {
			t.Errorf("SHA256SUMS: %s has %s, the file %s", f, sum, d)
		}
	}

	licences, err := os.ReadFile(filepath.Join(dir, "THIRD_PARTY_LICENSES"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^github\.com/hashicorp/nomad +v\S+ +BUSL-1\.1$`).Match(licences) {
		t.Errorf("THIRD_PARTY_LICENSES does not list github.com/hashicorp/nomad under BUSL-1.1")
	}

	found := 0
	for _, name := range binaries {
		for arch, machine := range machines {
			zipName := fmt.Sprintf("%s_%s_linux_%s.zip", name, version, arch)
			bin := unzip(t, filepath.Join(dir, zipName), name)
			found++
			checkELF(t, zipName, bin, machine)
			checkBuild(t, zipName, bin, arch, licences)
			if runtime.GOOS == "linux" && runtime.GOARCH == arch {
				checkVersion(t, name, bin)
			}
		}
	}
	if found != 4 {
		t.Errorf("%d binaries, want 4", found)
	}
	if _, ok := machines[runtime.GOARCH]; !ok || runtime.GOOS != "linux" {
		t.Logf("no binary for %s/%s to run", runtime.GOOS, runtime.GOARCH)
	}
}

// readSums reads a sha256sum file: digest, two spaces (or space and *), name.
func readSums(t *testing.T, path string) map[string]string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	line := regexp.MustCompile(`^([0-9a-f]{64}) [ *](.+)$`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("SHA256SUMS: not in sha256sum format: %q", sc.Text())
		}
		if _, dup := sums[m[2]]; dup {
			t.Fatalf("SHA256SUMS lists %s twice", m[2])
		}
		sums[m[2]] = m[1]
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sums
}

func digest(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// unzip returns the executable name from the zip, which must hold it with
// the licences and nothing else.
func unzip(t *testing.T, path, name string) []byte {
	r, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var names []string
	var bin []byte
	for _, f := range r.File {
		names = append(names, f.Name)
		if f.Name != name {
			continue
		}
		if f.Mode()&0o111 == 0 {
			t.Errorf("%s: %s is not executable: %v", path, name, f.Mode())
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		bin, err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %s: %v", path, name, err)
		}
	}
	slices.Sort(names)
	if want := []string{"LICENSE", "THIRD_PARTY_LICENSES", name}; !slices.Equal(names, want) {
		t.Fatalf("%s holds %q, want %q", path, names, want)
	}
	return bin
}

// checkELF: a 64-bit Linux executable for machine, static.
func checkELF(t *testing.T, what string, bin []byte, machine elf.Machine) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s: e_machine %v, want %v", what, f.Machine, machine)
	}
	if f.Class != elf.ELFCLASS64 || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		t.Errorf("%s: %v %v, want a 64-bit executable", what, f.Class, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: not static: it has a PT_INTERP", what)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s: not static: it needs %q", what, libs)
	}
}

// checkBuild reads the Go build information: the platform, cgo off,
// -trimpath; checks the version is stamped; and that each module the binary
// holds is in THIRD_PARTY_LICENSES.
func checkBuild(t *testing.T, what string, bin []byte, arch string, licences []byte) {
	info, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	for k, v := range map[string]string{"GOOS": "linux", "GOARCH": arch, "CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[k] != v {
			t.Errorf("%s: built with %s=%q, want %q", what, k, settings[k], v)
		}
	}
	// -trimpath leaves -ldflags out of the build information: look for the
	// stamped version itself (and run the binaries this machine can).
	if !bytes.Contains(bin, []byte(version)) {
		t.Errorf("%s: version %s is not stamped in it", what, version)
	}
	for _, m := range info.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m.Path) + ` +` + regexp.QuoteMeta(m.Version) + ` +\S`)
		if !line.Match(licences) {
			t.Errorf("%s: THIRD_PARTY_LICENSES does not list %s %s", what, m.Path, m.Version)
		}
	}
}

// checkVersion runs the binary's version command.
func checkVersion(t *testing.T, name string, bin []byte) {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		t.Errorf("%s version: %v\n%s", name, err, out)
		return
	}
	if got, want := strings.TrimSpace(string(out)), name+" "+version; got != want {
		t.Errorf("%s version printed %q, want %q", name, got, want)
	}
	t.Logf("%s version: %s", name, strings.TrimSpace(string(out)))
}
