package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	nomad "github.com/hashicorp/nomad/api"
)

// lastCount is the highest "count N" line in a log.
func lastCount(log string) int {
	n := 0
	for _, m := range regexp.MustCompile(`count (\d+)`).FindAllStringSubmatch(log, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

// TestDemoJob runs the shipped demo jobspec and uses it as an operator would:
// logs, exec, signal, and a stop that honours kill_signal.
func TestDemoJob(t *testing.T) {
	ref := dev.pushBusybox(t, "ferry/busybox:demo")
	registry := strings.SplitN(ref, "/", 2)[0]
	spec, err := os.ReadFile(filepath.Join(dev.root, "jobspecs/demo.nomad.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	dev.runJob(t, string(spec), "registry="+registry)
	defer dev.purge(t, "demo")

	alloc := dev.waitAlloc(t, "demo", 2*time.Minute, running)
	dev.waitLogs(t, alloc.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 2 })

	out, err := dev.nomadCLI(t, "alloc", "exec", "-task", "counter", alloc.ID, "/bin/sh", "-c", "echo exec-ok $(cat /proc/1/cmdline | tr '\\0' ' ')")
	if err != nil || !strings.Contains(out, "exec-ok /bin/sh -c") {
		t.Fatalf("alloc exec: %v\n%s", err, out)
	}
	dev.interactiveShell(t, alloc.ID, "counter")
	if _, err := dev.nomadCLI(t, "alloc", "signal", "-s", "SIGUSR1", alloc.ID, "counter"); err != nil {
		t.Fatal(err)
	}
	dev.waitLogs(t, alloc.ID, "counter", 30*time.Second, func(s string) bool { return strings.Contains(s, "signal USR1 at") })

	start := time.Now()
	if out, err := dev.nomadCLI(t, "job", "stop", "-detach", "demo"); err != nil {
		t.Fatalf("job stop: %v\n%s", err, out)
	}
	dev.waitLogs(t, alloc.ID, "counter", 30*time.Second, func(s string) bool { return strings.Contains(s, "stopping at") })
	a := dev.waitAlloc(t, "demo", time.Minute, func(a *nomad.AllocationListStub) bool {
		return a.ID == alloc.ID && a.ClientStatus == nomad.AllocClientStatusComplete
	})
	ts := a.TaskStates["counter"]
	if ts == nil || ts.Failed {
		t.Fatalf("task failed: %+v", ts)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("stop took %s: kill_signal was not honoured (kill_timeout is 20s)", d)
	}
	for _, e := range ts.Events {
		if e.Type == nomad.TaskTerminated && e.ExitCode != 0 {
			t.Fatalf("task exited %d after SIGINT, want 0", e.ExitCode)
		}
	}
}

const counterJob = `
variable "image" { type = string }
job "%s" {
  datacenters = ["*"]
  group "g" {
    restart { attempts = 0 }
    task "counter" {
      driver = "ferry"
      config {
        image   = var.image
        command = "/bin/sh"
        args    = ["-c", "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.5; done"]
      }
      kill_timeout = "5s"
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
`

// TestClientRestartKeepsTask restarts the Nomad client running a ferry task:
// the task keeps running and counting, and is recovered, not restarted.
func TestClientRestartKeepsTask(t *testing.T) {
	image := dev.pushBusybox(t, "ferry/busybox:restart")
	dev.runJob(t, fmt.Sprintf(counterJob, "restart"), "image="+image)
	defer dev.purge(t, "restart")

	alloc := dev.waitAlloc(t, "restart", 2*time.Minute, running)
	before := lastCount(dev.waitLogs(t, alloc.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 3 }))

	k := dev.clientIndex(t, alloc.NodeID)
	out, err := runScript(t, dev.root, "restart-client", k)
	if err != nil {
		t.Fatalf("restart-client %s: %v\n%s", k, err, out)
	}
	// The client comes back, re-attaches and the count goes on from where it was.
	after := dev.waitLogs(t, alloc.ID, "counter", 2*time.Minute, func(s string) bool { return lastCount(s) > before+6 })
	if strings.Count(after, "count 1\n") != 1 {
		t.Fatalf("the task started over after the client restart:\n%s", after)
	}
	a, _, err := dev.api.Allocations().Info(alloc.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts := a.TaskStates["counter"]; ts == nil || ts.State != "running" || ts.Restarts != 0 {
		t.Fatalf("task state after client restart: %+v", ts)
	}
}

// TestBadInputs: each mistake fails the task with a message that names the
// field or reference, and the driver stays healthy.
func TestBadInputs(t *testing.T) {
	image := dev.pushBusybox(t, "ferry/busybox:bad")
	registry := strings.SplitN(image, "/", 2)[0]
	cases := []struct {
		name   string
		config string
		want   string
	}{
		{"unknown-field", `image = "` + image + `"` + "\n imagee = \"x\"", "imagee"},
		{"bad-reference", `image = "Not A Ref"`, `image "Not A Ref"`},
		{"missing-tag", `image = "` + registry + `/ferry/busybox:nope"`, "not found"},
		{"unreachable-registry", `image = "10.97.0.1:1/ferry/busybox:1"`, "unreachable"},
		{"bad-capability", `image = "` + image + `"` + "\n cap_add = [\"NET_ADMINN\"]", "cap_add"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job := "bad-" + c.name
			dev.runJob(t, fmt.Sprintf(`
job %q {
  datacenters = ["*"]
  group "g" {
    restart { attempts = 0 }
    reschedule {
      attempts  = 0
      unlimited = false
    }
    task "t" {
      driver = "ferry"
      config {
        %s
        command = "sleep"
        args    = ["100"]
      }
      resources { memory = 32 }
    }
  }
}`, job, c.config))
			defer dev.purge(t, job)
			a := dev.waitAlloc(t, job, 2*time.Minute, func(a *nomad.AllocationListStub) bool {
				return a.ClientStatus == nomad.AllocClientStatusFailed
			})
			events := strings.Join(dev.taskEvents(t, a.ID, "t"), "\n")
			if !strings.Contains(events, c.want) {
				t.Fatalf("task events do not mention %q:\n%s", c.want, events)
			}
		})
	}
	nodes, _, err := dev.api.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if d := n.Drivers["ferry"]; d == nil || !d.Healthy {
			t.Fatalf("driver on %s is not healthy after bad inputs: %+v", n.Name, d)
		}
	}
}
