package plugin

import (
	"os"
	"testing"

	"github.com/ferry-nomad/ferry/driver/shim"
)

// TestMain lets the test binary serve as the task shim, as the driver binary
// does: the driver re-executes itself with "shim DIR".
func TestMain(m *testing.M) {
	shim.RunIfShim()
	code := m.Run()
	if archBinaries.dir != "" {
		_ = os.RemoveAll(archBinaries.dir)
	}
	os.Exit(code)
}
