package task

import (
	"fmt"
	"os"
	"testing"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/shim"
)

func TestMain(m *testing.M) {
	// The tests start their containers under the real shim: this binary
	// re-executed as `<test binary> shim <stateDir>`.
	shim.RunIfShim()
	if err := runctest.Subreaper(); err != nil {
		fmt.Fprintln(os.Stderr, "set child subreaper:", err)
	}
	os.Exit(m.Run())
}
