package plugin

import (
	"testing"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/shoenig/test/must"
)

// TestKeepRecorded: the record keeps the newest keep checkpoints, and the
// newest one copied off the node while none of those is.
func TestKeepRecorded(t *testing.T) {
	copied := func(name string) catalog.PeriodicCheckpoint {
		return catalog.PeriodicCheckpoint{Name: name, Copies: []catalog.Copy{{Where: catalog.CopySharedDir}}}
	}
	local := func(name string) catalog.PeriodicCheckpoint {
		return catalog.PeriodicCheckpoint{Name: name, CopyError: "no space left on device"}
	}
	names := func(cs []catalog.PeriodicCheckpoint) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		all  []catalog.PeriodicCheckpoint
		keep int
		want []string
	}{
		{"fewer than keep", []catalog.PeriodicCheckpoint{copied("1")}, 2, []string{"1"}},
		{"the newest keep", []catalog.PeriodicCheckpoint{copied("1"), copied("2"), copied("3")}, 2, []string{"2", "3"}},
		{"one copied among them", []catalog.PeriodicCheckpoint{copied("1"), copied("2"), local("3")}, 2, []string{"2", "3"}},
		{"none copied among them", []catalog.PeriodicCheckpoint{copied("1"), local("2"), local("3")}, 1, []string{"1", "3"}},
		{"none copied at all", []catalog.PeriodicCheckpoint{local("1"), local("2")}, 1, []string{"2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			must.Eq(t, tc.want, names(keepRecorded(tc.all, tc.keep)))
		})
	}
}
