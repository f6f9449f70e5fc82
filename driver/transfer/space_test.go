package transfer_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/shoenig/test/must"
)

// mountTmpfs mounts a tmpfs of size (e.g. "4m") on dir until the test
// ends, or skips the test where mounting is not allowed.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	must.NoError(t, os.MkdirAll(dir, 0o700))
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("mount a tmpfs on %s (the free space tests need root): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// announce records a move of a new allocation's task from src, ready,
// whose record announces bytes, with a push granted to dst.
func (w *world) announce(t *testing.T, src, dst *node, f *fixture, bytes int64) (alloc, secret string) {
	t.Helper()
	g, secret := grant(dst, time.Minute)
	alloc = newAllocID(t)
	must.NoError(t, w.cat.Put(testContext(t), &catalog.Record{AllocID: alloc, Task: testTask,
		SourceNodeID: src.id, SourceNodeName: src.name, State: catalog.StateReady,
		ManifestSHA256: f.digest(), Bytes: bytes, Files: len(f.files), Push: g}))
	return alloc, secret
}

func (f *fixture) bytes() int64 {
	var n int64
	for _, d := range f.files {
		n += int64(len(d))
	}
	return n
}

// A destination refuses a checkpoint larger than it accepts, than its
// record announced, or than its filesystem's free space allows, and keeps
// nothing of it; one that fits is received. The source's checkpoint is
// never touched.
func TestCheckpointSize(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	capped := w.nodeWith("capped", "127.0.0.4", transfer.Limits{MaxCheckpointSize: 1 << 20})
	// A 4 MiB filesystem keeps 5% of it free by default.
	small := w.node("small", "127.0.0.5")
	mountTmpfs(t, small.incoming(), "4m")
	f := newFixture(t) // 5 MiB and more

	// fetch fetches f from src to n, with the partial a cut push left
	// when partial is set.
	fetch := func(t *testing.T, n *node, partial bool) (string, error) {
		g, secret := grant(n, time.Minute)
		alloc := w.move(t, src, catalog.StateRestoring, f, nil, g)
		f.write(t, dirOf(t, src.checkpoints(), alloc))
		dest := dirOf(t, n.incoming(), alloc)
		if partial {
			must.NoError(t, os.MkdirAll(filepath.Join(dest, "images"), 0o700))
			must.NoError(t, os.WriteFile(filepath.Join(dest, "images", "pages-1.img"), f.files["images/pages-1.img"][:1<<20], 0o600))
		}
		_, err := transfer.Fetch(testContext(t), n.client, src.addr, secret, alloc, testTask, f.digest(), dest, nil,
			transfer.WithLimits(n.server.Limits))
		f.assertHas(t, dirOf(t, src.checkpoints(), alloc))
		return dest, err
	}
	cases := []struct {
		name string
		// run returns the transfer's error and the directory it wrote.
		run  func(t *testing.T) (string, error)
		is   error
		want string
	}{{
		name: "push larger than max_checkpoint_size",
		run: func(t *testing.T) (string, error) {
			g, secret := grant(capped, time.Minute)
			alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
			_, err := w.push(t, src, capped, alloc, secret, f, true)
			return dirOf(t, capped.incoming(), alloc), err
		},
		is:   transfer.ErrTooLarge,
		want: "more than the 1048576 bytes this node accepts (transfer max_checkpoint_size)",
	}, {
		name: "push announced larger than max_checkpoint_size",
		run: func(t *testing.T) (string, error) {
			alloc, secret := w.announce(t, src, capped, f, f.bytes())
			_, err := w.push(t, src, capped, alloc, secret, f, false)
			return dirOf(t, capped.incoming(), alloc), err
		},
		is:   transfer.ErrTooLarge,
		want: "transfer max_checkpoint_size",
	}, {
		name: "push bringing more than its record announces",
		run: func(t *testing.T) (string, error) {
			alloc, secret := w.announce(t, src, dst, f, 2<<20)
			_, err := w.push(t, src, dst, alloc, secret, f, false)
			return dirOf(t, dst.incoming(), alloc), err
		},
		is:   transfer.ErrTooLarge,
		want: "the push brings more than the 2097152 bytes its record announces",
	}, {
		name: "push beyond the free space",
		run: func(t *testing.T) (string, error) {
			g, secret := grant(small, time.Minute)
			alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
			_, err := w.push(t, src, small, alloc, secret, f, true)
			return dirOf(t, small.incoming(), alloc), err
		},
		is:   transfer.ErrNoSpace,
		want: "free and keeps 204.8 KiB of it free (transfer min_free_space): free space there",
	}, {
		name: "push announced larger than the free space",
		run: func(t *testing.T) (string, error) {
			alloc, secret := w.announce(t, src, small, f, f.bytes())
			_, err := w.push(t, src, small, alloc, secret, f, false)
			return dirOf(t, small.incoming(), alloc), err
		},
		is:   transfer.ErrNoSpace,
		want: "the checkpoint needs 5.0 MiB; the filesystem of " + small.incoming() + " has ",
	}, {
		name: "fetch larger than max_checkpoint_size",
		run:  func(t *testing.T) (string, error) { return fetch(t, capped, false) },
		is:   transfer.ErrTooLarge,
		want: "more than the 1048576 bytes this node accepts",
	}, {
		name: "fetch beyond the free space",
		run:  func(t *testing.T) (string, error) { return fetch(t, small, false) },
		is:   transfer.ErrNoSpace,
		want: "the checkpoint needs 5.0 MiB; the filesystem of " + small.incoming() + " has ",
	}, {
		name: "fetch beyond the free space, resuming a cut push",
		run:  func(t *testing.T) (string, error) { return fetch(t, small, true) },
		is:   transfer.ErrNoSpace,
		want: "the checkpoint needs 5.0 MiB, 4.0 MiB more than the 1.0 MiB already there",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := tc.run(t)
			must.ErrorIs(t, err, tc.is)
			must.ErrorContains(t, err, tc.want)
			must.DirNotExists(t, dir)
		})
	}
	// Nothing is left on the small filesystem, not even an allocation's
	// directory.
	entries, err := os.ReadDir(small.incoming())
	must.NoError(t, err)
	must.SliceEmpty(t, entries)

	t.Run("fits", func(t *testing.T) {
		little := newFixture(t)
		delete(little.files, "images/pages-1.img")
		little.raw = manifestOf(t, little.files)
		g, secret := grant(small, time.Minute)
		alloc := w.move(t, src, catalog.StateCheckpointing, little, g, nil)
		_, err := w.push(t, src, small, alloc, secret, little, true)
		must.NoError(t, err)
		little.assertHas(t, dirOf(t, small.incoming(), alloc))
	})
}
