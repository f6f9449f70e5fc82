package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	nomad "github.com/hashicorp/nomad/api"
)

// permissionJob runs busybox with extra config lines, once.
const permissionJob = `
job %q {
  datacenters = ["*"]
  type        = "batch"
  group "g" {
    restart { attempts = 0 }
    reschedule {
      attempts  = 0
      unlimited = false
    }
    task "t" {
      driver = "ferry"
      config {
        image   = %q
        command = "/bin/sh"
        args    = ["-c", "ls /host/etc/hostname && grep CapEff /proc/self/status"]
        %s
      }
      resources { memory = 32 }
    }
  }
}`

// TestJobPermissions: by default a job may neither bind the node's / nor
// add every capability, and the task fails naming the plugin option that
// would allow it; once the operator opens the options, the same job runs.
func TestJobPermissions(t *testing.T) {
	image := dev.pushBusybox(t, "ferry/busybox:permissions")
	cases := []struct{ name, config, refusal string }{
		{"bind-root", "mount {\n type = \"bind\"\n source = \"/\"\n target = \"/host\"\n readonly = true\n }", "volumes { enabled = true }"},
		{"all-caps", "cap_add = [\"ALL\"]\n volumes = [\"/etc:/host/etc:ro\"]", "allow_caps"},
	}
	run := func(t *testing.T, job, config string, ok func(*nomad.AllocationListStub) bool) *nomad.AllocationListStub {
		t.Helper()
		dev.runJob(t, fmt.Sprintf(permissionJob, job, image, config))
		t.Cleanup(func() { dev.purge(t, job) })
		return dev.waitAlloc(t, job, 2*time.Minute, ok)
	}
	failed := func(a *nomad.AllocationListStub) bool { return a.ClientStatus == nomad.AllocClientStatusFailed }
	for _, c := range cases {
		a := run(t, "perm-closed-"+c.name, c.config, failed)
		if events := strings.Join(dev.taskEvents(t, a.ID, "t"), "\n"); !strings.Contains(events, c.refusal) {
			t.Fatalf("%s: the refusal does not name %q:\n%s", c.name, c.refusal, events)
		}
	}

	dev.reconfigure(t, "FERRY_OPEN_PERMISSIONS=1")
	defer dev.reconfigure(t)
	complete := func(a *nomad.AllocationListStub) bool {
		return a.ClientStatus == nomad.AllocClientStatusComplete || failed(a)
	}
	for _, c := range cases {
		a := run(t, "perm-open-"+c.name, c.config, complete)
		if a.ClientStatus != nomad.AllocClientStatusComplete {
			t.Fatalf("%s: failed once allowed:\n%s", c.name, strings.Join(dev.taskEvents(t, a.ID, "t"), "\n"))
		}
	}
	// Every capability the node can grant: the task's CapEff is this
	// machine's bounding set.
	logs, _ := dev.nomadCLI(t, "alloc", "logs", "-job", "perm-open-all-caps", "t")
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	bounding := regexp.MustCompile(`CapBnd:\s*([0-9a-f]+)`).FindSubmatch(status)
	if bounding == nil || !strings.Contains(logs, "CapEff:\t"+string(bounding[1])) {
		t.Fatalf("cap_add = [\"ALL\"] did not give every capability of the node (%s):\n%s", bounding, logs)
	}
}
