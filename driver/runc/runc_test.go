package runc

import (
	"context"
	"errors"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

func newRunc(t *testing.T) *Runc {
	t.Helper()
	runctest.Require(t)
	return &Runc{
		Path:   runctest.RuncPath(),
		Root:   t.TempDir(),
		Logger: testutil.Logger(t, hclog.Debug),
	}
}

// runningContainer starts a long-running busybox container.
func runningContainer(t *testing.T, r *Runc) string {
	t.Helper()
	b := runctest.NewBundle(t, "sleep", "1000")
	runctest.RunDetached(t, r.Root, b)
	return b.ID
}

func TestVersion(t *testing.T) {
	r := newRunc(t)
	v, err := r.Version(context.Background())
	must.NoError(t, err)
	must.RegexMatch(t, regexp.MustCompile(`^\d+\.\d+\.\d+`), v)
}

func TestParseVersion(t *testing.T) {
	v, err := parseVersion([]byte("runc version 1.3.3\ncommit: v1.3.3\nspec: 1.2.1\n"))
	must.NoError(t, err)
	must.Eq(t, "1.3.3", v)

	_, err = parseVersion([]byte("garbage"))
	must.Error(t, err)
}

func TestStateNotExist(t *testing.T) {
	r := newRunc(t)
	ctx := context.Background()

	_, err := r.State(ctx, "nope")
	must.Error(t, err)
	must.True(t, errors.Is(err, ErrNotExist), must.Sprintf("err: %v", err))

	// Delete of a missing container is not an error.
	must.NoError(t, r.Delete(ctx, "nope", true))

	// A missing root holds no containers.
	list, err := r.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, list)

	err = r.Kill(ctx, "nope", syscall.SIGTERM, false)
	must.True(t, errors.Is(err, ErrNotExist), must.Sprintf("err: %v", err))
}

func TestStateListKillDelete(t *testing.T) {
	r := newRunc(t)
	ctx := context.Background()
	id := runningContainer(t, r)

	s, err := r.State(ctx, id)
	must.NoError(t, err)
	must.Eq(t, id, s.ID)
	must.Eq(t, StatusRunning, s.Status)
	must.Positive(t, s.Pid)
	must.False(t, s.Created.IsZero())

	list, err := r.List(ctx)
	must.NoError(t, err)
	must.Len(t, 1, list)
	must.Eq(t, id, list[0].ID)

	must.NoError(t, r.Kill(ctx, id, syscall.SIGKILL, false))
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err = r.State(ctx, id)
		must.NoError(t, err)
		if s.Status == StatusStopped || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	must.Eq(t, StatusStopped, s.Status)

	err = r.Kill(ctx, id, syscall.SIGTERM, false)
	must.True(t, errors.Is(err, ErrNotRunning), must.Sprintf("err: %v", err))

	must.NoError(t, r.Delete(ctx, id, false))
	_, err = r.State(ctx, id)
	must.True(t, errors.Is(err, ErrNotExist), must.Sprintf("err: %v", err))
}

func TestStats(t *testing.T) {
	r := newRunc(t)
	ctx := context.Background()
	id := runningContainer(t, r)

	s, err := r.Stats(ctx, id)
	must.NoError(t, err)
	must.Positive(t, s.Memory.Usage)
	must.Positive(t, s.CPU.TotalNs)
	must.Positive(t, s.Memory.Limit)
	t.Logf("stats: %+v", s)
}

func TestParseStats(t *testing.T) {
	v1 := `{"type":"stats","id":"x","data":{"cpu":{"usage":{"total":10,"percpu":[4,6],"kernel":3,"user":7},
"throttling":{"periods":5,"throttledPeriods":2,"throttledTime":99}},
"memory":{"cache":1,"usage":{"limit":1000,"usage":500,"max":600,"failcnt":0},
"swap":{"limit":0,"usage":507,"failcnt":0},"raw":{"total_cache":11,"total_rss":22,"cache":1,"rss":2}}}}`
	s, err := parseStats([]byte(v1))
	must.NoError(t, err)
	must.Eq(t, CPUStats{TotalNs: 10, KernelNs: 3, UserNs: 7, PerCPUNs: []uint64{4, 6},
		ThrottlingPeriods: 5, ThrottledPeriods: 2, ThrottledTimeNs: 99}, s.CPU)
	must.Eq(t, MemoryStats{Usage: 500, MaxUsage: 600, Limit: 1000, Cache: 11, RSS: 22, Swap: 7}, s.Memory)

	v2 := `{"type":"stats","id":"x","data":{"memory":{"usage":{"limit":1000,"usage":500},
"swap":{"usage":510},"raw":{"file":33,"anon":44}}}}`
	s, err = parseStats([]byte(v2))
	must.NoError(t, err)
	must.Eq(t, uint64(33), s.Memory.Cache)
	must.Eq(t, uint64(44), s.Memory.RSS)
	must.Eq(t, uint64(10), s.Memory.Swap)
}

func TestParseLog(t *testing.T) {
	must.Eq(t, "container does not exist", ParseLog([]byte(
		`{"level":"error","msg":"container does not exist","time":"2026-01-01T00:00:00Z"}`+"\n")))
	must.Eq(t, "exec failed: boom", ParseLog([]byte(
		`{"level":"warning","msg":"meh","time":"x"}`+"\n"+
			`{"level":"error","msg":"exec failed: boom","time":"x"}`+"\nexec failed: boom\n")))
	must.Eq(t, "plain text", ParseLog([]byte("plain text\n")))
	must.Eq(t, "", ParseLog(nil))
}
