package load

import (
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

func TestWindow(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	type add struct {
		key string
		at  int // seconds after t0
		cpu float64
	}
	cases := []struct {
		name     string
		span     time.Duration
		adds     []add
		key      string
		wantCPU  float64
		wantN    int
		wantKeys int
	}{
		{
			name: "no samples",
			span: 30 * time.Second,
			key:  "a",
		},
		{
			name:    "one sample",
			span:    30 * time.Second,
			adds:    []add{{"a", 0, 100}},
			key:     "a",
			wantCPU: 100, wantN: 1, wantKeys: 1,
		},
		{
			name:    "mean of the samples within the span",
			span:    30 * time.Second,
			adds:    []add{{"a", 0, 100}, {"a", 10, 200}, {"a", 20, 600}},
			key:     "a",
			wantCPU: 300, wantN: 3, wantKeys: 1,
		},
		{
			name:    "a sample exactly span old is dropped",
			span:    30 * time.Second,
			adds:    []add{{"a", 0, 100}, {"a", 10, 200}, {"a", 20, 600}, {"a", 30, 400}},
			key:     "a",
			wantCPU: 400, wantN: 3, wantKeys: 1,
		},
		{
			name:    "a gap drops everything older",
			span:    30 * time.Second,
			adds:    []add{{"a", 0, 100}, {"a", 10, 200}, {"a", 100, 50}},
			key:     "a",
			wantCPU: 50, wantN: 1, wantKeys: 1,
		},
		{
			name:    "keys are independent",
			span:    30 * time.Second,
			adds:    []add{{"a", 0, 100}, {"b", 0, 1000}, {"a", 10, 300}},
			key:     "a",
			wantCPU: 200, wantN: 2, wantKeys: 2,
		},
		{
			name:    "zero span keeps the latest only",
			span:    0,
			adds:    []add{{"a", 0, 100}, {"a", 10, 200}, {"a", 10, 300}},
			key:     "a",
			wantCPU: 300, wantN: 1, wantKeys: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWindow(tc.span)
			for _, a := range tc.adds {
				w.add(a.key, at(a.at), Resources{CPU: a.cpu, MemoryMB: 2 * a.cpu})
			}
			got, n := w.mean(tc.key)
			must.Eq(t, tc.wantN, n)
			must.Eq(t, Resources{CPU: tc.wantCPU, MemoryMB: 2 * tc.wantCPU}, got)
			must.Eq(t, tc.wantKeys, w.len())
		})
	}
}

func TestWindowRetain(t *testing.T) {
	w := newWindow(time.Minute)
	now := time.Now()
	for _, k := range []string{"a", "b", "c"} {
		w.add(k, now, Resources{CPU: 1})
	}
	w.retain(func(k string) bool { return k != "b" })
	must.Eq(t, 2, w.len())
	_, n := w.mean("b")
	must.Eq(t, 0, n)
	_, n = w.mean("a")
	must.Eq(t, 1, n)
}

func TestWindowBounded(t *testing.T) {
	w := newWindow(10 * time.Second)
	t0 := time.Now()
	for i := range 10_000 {
		w.add("a", t0.Add(time.Duration(i)*time.Second), Resources{CPU: float64(i)})
	}
	got, n := w.mean("a")
	must.Eq(t, 10, n)
	must.Eq(t, 9994.5, got.CPU) // mean of 9990..9999
	must.LessEq(t, 64, cap(w.series["a"]))
}
