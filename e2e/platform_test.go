package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	nomad "github.com/hashicorp/nomad/api"
)

// archprintImage builds e2e/testdata/archprint for arch into a one-layer
// image for linux/arch.
func archprintImage(t testing.TB, arch string) v1.Image {
	return goImage(t, "archprint", arch)
}

// goImage builds the program e2e/testdata/<name> for arch (static, CGO
// off) into a one-layer image for linux/arch whose entrypoint is /<name>.
func goImage(t testing.TB, name, arch string) v1.Image {
	t.Helper()
	b, err := os.ReadFile(buildGo(t, name, arch))
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := testutil.Tar(testutil.TarEntry{Name: name, Mode: 0o755, Body: string(b)})
	if err != nil {
		t.Fatal(err)
	}
	layer, err := testutil.LayerFromBytes(tarball)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: arch}, v1.Config{Entrypoint: []string{"/" + name}}, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// buildGo builds the program e2e/testdata/<name> for linux/arch (static,
// CGO off) and returns the binary.
func buildGo(t testing.TB, name, arch string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	build := exec.Command("go", "build", "-o", bin, "./testdata/"+name)
	build.Dir = filepath.Join(repoRoot(), "e2e")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s for %s: %v\n%s", name, arch, err, out)
	}
	return bin
}

// qemuAarch64 reports whether arm64 binaries run here (binfmt_misc with
// qemu-user-static, registered by scripts/deps.sh).
func qemuAarch64() bool {
	b, err := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64")
	return err == nil && strings.HasPrefix(string(b), "enabled")
}

// archprintJob runs on one node (job, node name, then the task's config
// body, e.g. image = "…").
const archprintJob = `
job %q {
  datacenters = ["*"]
  type        = "service"
  constraint {
    attribute = "${node.unique.name}"
    value     = %q
  }
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      attempts  = 0
      unlimited = false
    }
    task "t" {
      driver = "ferry"
      config {
        %s
      }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}`

// imageConfig is a config body naming one image.
func imageConfig(ref string) string { return fmt.Sprintf("image = %q", ref) }

// TestImageForNodePlatform: one multi-platform image, built here from one
// program for amd64 and arm64, pushed to the registry and written as an OCI
// layout; each client runs the variant for its platform.
func TestImageForNodePlatform(t *testing.T) {
	dev.reconfigure(t, "FERRY_PLATFORM_C2=linux/arm64")
	defer dev.reconfigure(t)

	idx := testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64": archprintImage(t, "amd64"),
		"linux/arm64": archprintImage(t, "arm64"),
	})
	testutil.PushIndex(t, idx, dev.push+"/ferry/archprint:1")
	layout := "/var/lib/ferry-dev/layouts/archprint"
	_ = os.RemoveAll(layout)
	testutil.WriteLayoutIndex(t, layout, "1", idx)

	// A job naming an image per architecture (images, no image) runs the
	// amd64 one on the amd64 client and the arm64 one on the arm64 client.
	amd64Ref, arm64Ref := dev.registry+"/ferry/archprint:amd64", dev.registry+"/ferry/archprint:arm64"
	testutil.PushImage(t, archprintImage(t, "amd64"), dev.push+"/ferry/archprint:amd64")
	testutil.PushImage(t, archprintImage(t, "arm64"), dev.push+"/ferry/archprint:arm64")
	for _, c := range []struct{ job, node, ref, arch string }{
		{"arch-images-c1", "ferry-c1", amd64Ref, "amd64"},
		{"arch-images-c2", "ferry-c2", arm64Ref, "arm64"},
	} {
		dev.runJob(t, fmt.Sprintf(archprintJob, c.job, c.node, fmt.Sprintf("images = {\n amd64 = %q\n arm64 = %q\n }", amd64Ref, arm64Ref)))
		t.Cleanup(func() { dev.purge(t, c.job) })
		if c.arch == "arm64" && !qemuAarch64() {
			continue
		}
		a := dev.waitAlloc(t, c.job, 2*time.Minute, running)
		dev.waitLogs(t, a.ID, "t", time.Minute, func(s string) bool { return strings.Contains(s, "arch "+c.arch+"\n") })
		if events := strings.Join(dev.taskEvents(t, a.ID, "t"), "\n"); !strings.Contains(events, c.ref) {
			t.Fatalf("%s: events do not name %s:\n%s", c.node, c.ref, events)
		}
	}

	// The amd64 client runs the amd64 variant from the registry.
	dev.runJob(t, fmt.Sprintf(archprintJob, "arch-c1", "ferry-c1", imageConfig(dev.registry+"/ferry/archprint:1")))
	t.Cleanup(func() { dev.purge(t, "arch-c1") })
	a := dev.waitAlloc(t, "arch-c1", 2*time.Minute, running)
	dev.waitLogs(t, a.ID, "t", time.Minute, func(s string) bool { return strings.Contains(s, "arch amd64\n") })
	if events := strings.Join(dev.taskEvents(t, a.ID, "t"), "\n"); strings.Contains(events, "Entrypoint ") {
		t.Fatalf("the native variant got an event about its entrypoint's architecture:\n%s", events)
	}

	// The client choosing linux/arm64 runs the arm64 variant from the layout.
	dev.runJob(t, fmt.Sprintf(archprintJob, "arch-c2", "ferry-c2", imageConfig("oci:"+layout+":1")))
	t.Cleanup(func() { dev.purge(t, "arch-c2") })
	if qemuAarch64() {
		b := dev.waitAlloc(t, "arch-c2", 2*time.Minute, running)
		dev.waitLogs(t, b.ID, "t", time.Minute, func(s string) bool { return strings.Contains(s, "arch arm64\n") })
		events := strings.Join(dev.taskEvents(t, b.ID, "t"), "\n")
		if !strings.Contains(events, "for linux/arm64") {
			t.Fatalf("events do not name the chosen platform:\n%s", events)
		}
		// The task says it runs under emulation, naming the handler.
		emulated := "Entrypoint /archprint is a linux/arm64 binary; this node is linux/" + runtime.GOARCH +
			" and runs it under emulation (binfmt_misc handler qemu-aarch64: "
		if !strings.Contains(events, emulated) {
			t.Fatalf("no event about the emulation (want %q):\n%s", emulated, events)
		}
		return
	}
	// Without an arm64 emulator the arm64 program cannot run here, and
	// the task says why before it fails.
	b := dev.waitAlloc(t, "arch-c2", 2*time.Minute, func(a *nomad.AllocationListStub) bool {
		return a.ClientStatus == nomad.AllocClientStatusFailed
	})
	events := strings.Join(dev.taskEvents(t, b.ID, "t"), "\n")
	if !strings.Contains(events, "exec format error") {
		t.Fatalf("arm64 task without an emulator did not fail with an exec error:\n%s", events)
	}
	if want := noEmulatorEvent("arm64"); !strings.Contains(events, want) {
		t.Fatalf("no event about the missing emulator (want %q):\n%s", want, events)
	}
}

// noEmulatorEvent is the task event for an entrypoint built for arch on
// this machine, which has no binfmt_misc handler for it.
func noEmulatorEvent(arch string) string {
	node := "linux/" + runtime.GOARCH
	return "Entrypoint /archprint is a linux/" + arch + " binary; this node is " + node +
		` and has no binfmt_misc handler for it: the task will fail with "exec format error" (register an emulator such as qemu-user-static, or use the image for ` + node + ")"
}

// TestImageWithoutEmulator: a client choosing images for an architecture
// this machine cannot run (no binfmt emulator registered) gets that variant,
// a task event says its entrypoint cannot run here, and the task fails with
// a clear exec error instead of running something else.
func TestImageWithoutEmulator(t *testing.T) {
	arch := ""
	for _, a := range []string{"riscv64", "s390x", "ppc64le", "mips64le"} {
		if _, err := os.Stat("/proc/sys/fs/binfmt_misc/qemu-" + a); os.IsNotExist(err) {
			arch = a
			break
		}
	}
	if arch == "" {
		t.Skip("every candidate architecture has an emulator registered here")
	}
	dev.reconfigure(t, "FERRY_PLATFORM_C2=linux/"+arch)
	defer dev.reconfigure(t)

	idx := testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64":   archprintImage(t, "amd64"),
		"linux/" + arch: archprintImage(t, arch),
	})
	testutil.PushIndex(t, idx, dev.push+"/ferry/archprint-"+arch+":1")
	dev.runJob(t, fmt.Sprintf(archprintJob, "arch-noemu", "ferry-c2", imageConfig(dev.registry+"/ferry/archprint-"+arch+":1")))
	t.Cleanup(func() { dev.purge(t, "arch-noemu") })
	b := dev.waitAlloc(t, "arch-noemu", 2*time.Minute, func(a *nomad.AllocationListStub) bool {
		return a.ClientStatus == nomad.AllocClientStatusFailed
	})
	events := strings.Join(dev.taskEvents(t, b.ID, "t"), "\n")
	if !strings.Contains(events, "for linux/"+arch) {
		t.Fatalf("the %s variant was not chosen:\n%s", arch, events)
	}
	if want := noEmulatorEvent(arch); !strings.Contains(events, want) {
		t.Fatalf("no event about the missing emulator (want %q):\n%s", want, events)
	}
	stderr, _ := dev.nomadCLI(t, "alloc", "logs", "-stderr", b.ID, "t")
	if !strings.Contains(stderr, "exec format error") {
		t.Fatalf("the %s variant did not fail with an exec error; stderr:\n%s", arch, stderr)
	}
}
