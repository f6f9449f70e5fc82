package plugin

import (
	"os"
	"path/filepath"
	"testing"
	"time"

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

// TestClaimCopy: the copy a replacement restores is set aside under a name
// its lost node never prunes, and taken again by a retry of the same
// allocation; a copy gone, or a node without the shared checkpoint_dir, is
// an error naming it.
func TestClaimCopy(t *testing.T) {
	env := &environment{shared: true, checkpoints: t.TempDir()}
	lost, replacement := "0000dead-0000-4000-8000-000000000000", "0000f00d-0000-4000-8000-000000000000"
	rec := &catalog.Record{AllocID: lost, Task: "t", SourceNodeName: "node-1", Periodic: "20261206T140211.000Z"}
	root, err := env.periodicCopies(lost, "t")
	must.NoError(t, err)
	must.NoError(t, os.MkdirAll(filepath.Join(root, rec.Periodic), 0o700))

	claimed, err := claimCopy(env, rec, replacement)
	must.NoError(t, err)
	must.Eq(t, rec.Periodic+".claimed."+replacement, claimed)
	_, err = os.Stat(filepath.Join(root, claimed))
	must.NoError(t, err)
	_, err = time.Parse(periodicStamp, claimed)
	must.Error(t, err, must.Sprint("a claimed copy must not look like one keepNewest prunes"))

	again, err := claimCopy(env, rec, replacement)
	must.NoError(t, err)
	must.Eq(t, claimed, again)

	_, err = claimCopy(env, rec, "0000abba-0000-4000-8000-000000000000")
	must.ErrorContains(t, err, "claim the copy of the periodic checkpoint 20261206T140211.000Z")

	_, err = claimCopy(&environment{}, rec, replacement)
	must.ErrorContains(t, err, "this node has no checkpoint_dir")
}
