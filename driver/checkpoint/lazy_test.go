package checkpoint

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// TestLazySupport asks the real CRIU, and grows real pipes, under both
// settings of fs.pipe-max-size that matter: too small for CRIU's page
// transfer (the reason names the sysctl and its value), and large enough.
func TestLazySupport(t *testing.T) {
	const sysctl = "/proc/sys/fs/pipe-max-size"
	orig, err := os.ReadFile(sysctl)
	must.NoError(t, err)
	t.Cleanup(func() { _ = os.WriteFile(sysctl, orig, 0o644) })
	requireCriu(t)
	criuPath := "criu"
	if caps := capEff(t); caps&(1<<24) != 0 {
		t.Skip("with CAP_SYS_RESOURCE, fs.pipe-max-size does not limit the driver")
	}

	for _, tc := range []struct {
		limit  string
		ok     bool
		reason string
	}{
		{"1048576", false, "sysctl -w fs.pipe-max-size=4194304"},
		{"4194304", true, ""},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			must.NoError(t, os.WriteFile(sysctl, []byte(tc.limit), 0o644))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ok, reason := LazySupport(ctx, criuPath)
			t.Logf("ok=%t reason=%q", ok, reason)
			must.Eq(t, tc.ok, ok)
			must.StrContains(t, reason, tc.reason)
		})
	}
}

// capEff is this process's effective capability set.
func capEff(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	must.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			for _, c := range strings.TrimSpace(v) {
				caps = caps<<4 | uint64(strings.IndexRune("0123456789abcdef", c))
			}
			return caps
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return 0
}
