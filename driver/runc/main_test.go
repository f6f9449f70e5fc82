package runc

import (
	"fmt"
	"os"
	"testing"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
)

func TestMain(m *testing.M) {
	// Containers started detached are reparented here and reaped by
	// runctest.Cleanup.
	if err := runctest.Subreaper(); err != nil {
		fmt.Fprintln(os.Stderr, "set child subreaper:", err)
	}
	os.Exit(m.Run())
}
