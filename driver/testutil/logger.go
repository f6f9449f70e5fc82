package testutil

import (
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// Logger logs to the test's output at level, or at the level FERRY_TEST_LOG
// names (e.g. FERRY_TEST_LOG=trace) when it is set.
func Logger(t testing.TB, level hclog.Level) hclog.Logger {
	if env := os.Getenv("FERRY_TEST_LOG"); env != "" {
		level = hclog.LevelFromString(env)
	}
	if level == hclog.Off {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: level, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
