package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
)

// starterEnv makes the test binary act as a short-lived process that
// starts a shim and exits, to show that the shim outlives its starter.
const starterEnv = "FERRY_SHIM_TEST_STARTER"

func TestMain(m *testing.M) {
	RunIfShim()
	if spec := os.Getenv(starterEnv); spec != "" {
		os.Exit(starterMain(spec))
	}
	// A shim whose starter exited is reparented here and reaped by the
	// test that started it.
	if err := runctest.Subreaper(); err != nil {
		fmt.Fprintln(os.Stderr, "set child subreaper:", err)
	}
	os.Exit(m.Run())
}

// starterRequest is what the starter process is asked to start.
type starterRequest struct {
	StateDir string
	Config   Config
}

func starterMain(spec string) int {
	var req starterRequest
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, os.Args[0], req.StateDir, req.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(p.ShimPID)
	return 0
}
