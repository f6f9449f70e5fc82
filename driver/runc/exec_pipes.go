package runc

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
)

// execPipes runs cmd (a `runc exec` without a terminal) with pipes for its
// stdio, copies them to and from opts and returns the exit code once the
// process exited and its output reached EOF.
func execPipes(ctx context.Context, cmd *exec.Cmd, opts ExecOptions) (int, error) {
	var closeAfterStart, closeAtEnd []*os.File
	defer func() {
		for _, f := range closeAfterStart {
			_ = f.Close()
		}
		for _, f := range closeAtEnd {
			_ = f.Close()
		}
	}()

	var stdinW *os.File
	if opts.Stdin != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return -1, fmt.Errorf("stdin pipe: %w", err)
		}
		cmd.Stdin = r
		stdinW = w
		closeAfterStart = append(closeAfterStart, r)
		closeAtEnd = append(closeAtEnd, w)
	}
	outs := []struct {
		w   io.Writer
		set func(*os.File)
	}{
		{orDiscard(opts.Stdout), func(f *os.File) { cmd.Stdout = f }},
		{orDiscard(opts.Stderr), func(f *os.File) { cmd.Stderr = f }},
	}
	readers := make([]*os.File, 0, len(outs))
	for _, o := range outs {
		r, w, err := os.Pipe()
		if err != nil {
			return -1, fmt.Errorf("output pipe: %w", err)
		}
		o.set(w)
		readers = append(readers, r)
		closeAfterStart = append(closeAfterStart, w)
		closeAtEnd = append(closeAtEnd, r)
	}

	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start runc: %w", err)
	}
	for _, f := range closeAfterStart {
		_ = f.Close()
	}
	closeAfterStart = nil

	if stdinW != nil {
		go func() {
			_, _ = io.Copy(onlyWriter{stdinW}, onlyReader{opts.Stdin})
			_ = stdinW.Close()
		}()
	}
	var wg sync.WaitGroup
	for i, r := range readers {
		wg.Add(1)
		go func(w io.Writer, r *os.File) {
			defer wg.Done()
			_, _ = io.Copy(onlyWriter{w}, onlyReader{r})
		}(outs[i].w, r)
	}
	copied := make(chan struct{})
	go func() {
		wg.Wait()
		close(copied)
	}()

	waitErr := cmd.Wait()
	select {
	case <-copied:
	case <-ctx.Done():
		for _, r := range readers {
			_ = r.Close()
		}
		<-copied
	}
	return exitCode(ctx, cmd, waitErr)
}
