package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// lazyPipePages is the size, in pages, of the pipes CRIU moves lazy pages
// through (PIPE_MAX_SIZE in CRIU's page-pipe.c: eight pages' worth of
// pipe_buffer structures). Growing a pipe to it takes fs.pipe-max-size of
// at least that much, or CAP_SYS_RESOURCE.
const lazyPipePages = 819

// LazySupport reports whether this node can take part in a lazy
// (post-copy) migration: CRIU, asked through its RPC (go-criu), supports
// lazy pages (userfaultfd with the non-cooperative events it needs), and
// a pipe grows to the size CRIU's page transfer uses. CRIU's own check
// does not cover the pipe: without it, the checkpoint is reported ready and
// the first page request fails. When ok is false, reason says why and what
// to change.
func LazySupport(ctx context.Context, criuPath string) (ok bool, reason string) {
	if err := lazyPagesFeature(ctx, criuPath); err != nil {
		return false, err.Error()
	}
	if err := growPipe(lazyPipePages * os.Getpagesize()); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// lazyPagesFeature asks CRIU whether it supports lazy pages here.
func lazyPagesFeature(ctx context.Context, criuPath string) error {
	c := criu.MakeCriu()
	c.SetCriuPath(criuPath)
	type answer struct {
		f   *rpc.CriuFeatures
		err error
	}
	done := make(chan answer, 1)
	go func() {
		f, err := c.FeatureCheck(&rpc.CriuFeatures{LazyPages: proto.Bool(true)})
		done <- answer{f, err}
	}()
	select {
	case <-ctx.Done():
		return fmt.Errorf("criu feature check (lazy pages): %w", ctx.Err())
	case a := <-done:
		if a.err != nil {
			return fmt.Errorf("criu feature check (lazy pages): %w", a.err)
		}
		if !a.f.GetLazyPages() {
			return errors.New("CRIU reports no lazy pages support: the kernel's userfaultfd is missing or lacks the non-cooperative events " +
				"(CONFIG_USERFAULTFD, Linux >= 4.11; see `criu check --feature uffd-noncoop`)")
		}
		return nil
	}
}

// growPipe makes a pipe and grows it to size bytes, as CRIU's page
// transfer does.
func growPipe(size int) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, size); err != nil {
		// The kernel rounds a pipe's size up to a power of two.
		need := 1 << bits.Len(uint(size-1))
		limit, _ := os.ReadFile("/proc/sys/fs/pipe-max-size")
		return fmt.Errorf("a pipe cannot grow to the %d bytes CRIU's lazy page transfer uses (%v; fs.pipe-max-size is %s, "+
			"and the driver lacks CAP_SYS_RESOURCE): set `sysctl -w fs.pipe-max-size=%d` (and keep it in /etc/sysctl.d)",
			size, err, strings.TrimSpace(string(limit)), need)
	}
	return nil
}
