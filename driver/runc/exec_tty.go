package runc

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// ttyDrainTimeout bounds how long output is still read from the terminal
// after runc exited.
const ttyDrainTimeout = 2 * time.Second

// defaultTerminalSize is used until the caller sends a size.
var defaultTerminalSize = TerminalSize{Width: 80, Height: 24}

// firstSizeWait bounds how long a terminal exec waits for the caller's first
// size before it starts. `nomad alloc exec -t` sends its terminal's size
// first, but on its own stream beside stdin: without the wait a shell could
// run what was typed ahead on a terminal of the default size.
const firstSizeWait = 500 * time.Millisecond

// execTTY runs cmd (a `runc exec` with a terminal) as the session leader of
// a new pseudo-terminal. runc allocates the container's terminal, copies
// between it and this one and follows its size on SIGWINCH; resizing this
// terminal's master delivers that signal to runc.
func execTTY(ctx context.Context, cmd *exec.Cmd, opts ExecOptions) (int, error) {
	master, slave, err := openPty()
	if err != nil {
		return -1, err
	}
	defer master.Close()
	slaveOpen := true
	defer func() {
		if slaveOpen {
			_ = slave.Close()
		}
	}()

	// Raw, as runc makes it once it has the container's terminal: input
	// sent before is not echoed by this terminal, and output the task
	// writes before is not processed twice (the container's terminal
	// turns "\n" into "\r\n" already).
	if err := makeRaw(slave); err != nil {
		return -1, fmt.Errorf("terminal raw mode: %w", err)
	}
	size := firstSize(ctx, opts.Resize, defaultTerminalSize)
	if err := setSize(master, size); err != nil {
		return -1, fmt.Errorf("terminal size: %w", err)
	}

	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start runc: %w", err)
	}
	_ = slave.Close()
	slaveOpen = false

	stop := make(chan struct{})
	defer close(stop)
	if opts.Resize != nil {
		go func() {
			for {
				select {
				case <-stop:
					return
				case sz, ok := <-opts.Resize:
					if !ok {
						return
					}
					_ = setSize(master, sz)
				}
			}
		}()
	}
	if opts.Stdin != nil {
		go func() { _, _ = io.Copy(onlyWriter{master}, onlyReader{opts.Stdin}) }()
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		// Reading the master fails with EIO once runc, the last holder of
		// the terminal, has exited: that is the end of the output.
		_, _ = io.Copy(onlyWriter{orDiscard(opts.Stdout)}, onlyReader{master})
	}()

	waitErr := cmd.Wait()
	timer := time.NewTimer(ttyDrainTimeout)
	defer timer.Stop()
	select {
	case <-copied:
	case <-ctx.Done():
	case <-timer.C:
	}
	_ = master.SetReadDeadline(time.Now())
	<-copied
	return exitCode(ctx, cmd, waitErr)
}

// openPty allocates a pseudo-terminal whose master is non-blocking, so reads
// from it honour deadlines and Close.
func openPty() (master, slave *os.File, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	defer m.Close()
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		_ = s.Close()
		return nil, nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		_ = s.Close()
		return nil, nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), s, nil
}

// firstSize waits up to firstSizeWait for a size on ch and returns the
// latest one queued by then, or def; a zero size does not count.
func firstSize(ctx context.Context, ch <-chan TerminalSize, def TerminalSize) TerminalSize {
	if ch == nil {
		return def
	}
	timer := time.NewTimer(firstSizeWait)
	defer timer.Stop()
	for {
		select {
		case sz, ok := <-ch:
			if !ok {
				return def
			}
			if sz.Width != 0 && sz.Height != 0 {
				return latestSize(ch, sz)
			}
			// A size of nothing (Nomad's plugin layer may forward one
			// before the terminal's) is no size: wait on.
		case <-timer.C:
			return def
		case <-ctx.Done():
			return def
		}
	}
}

// latestSize returns the last size already queued on ch, or def; a zero
// size does not count.
func latestSize(ch <-chan TerminalSize, def TerminalSize) TerminalSize {
	if ch == nil {
		return def
	}
	for {
		select {
		case sz, ok := <-ch:
			if !ok {
				return def
			}
			if sz.Width != 0 && sz.Height != 0 {
				def = sz
			}
		default:
			return def
		}
	}
}

// setSize sets the window size of the terminal behind f.
func setSize(f *os.File, sz TerminalSize) error {
	if sz.Width == 0 || sz.Height == 0 {
		return nil
	}
	ws := &unix.Winsize{Row: sz.Height, Col: sz.Width}
	return control(f, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, ws)
	})
}

// makeRaw puts the terminal behind f in raw mode (cfmakeraw), as runc puts
// its own terminal.
func makeRaw(f *os.File) error {
	return control(f, func(fd int) error {
		t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return err
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP |
			unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8
		t.Oflag &^= unix.OPOST
		t.Cc[unix.VMIN] = 1
		t.Cc[unix.VTIME] = 0
		return unix.IoctlSetTermios(fd, unix.TCSETS, t)
	})
}

// control runs fn on f's descriptor without switching f to blocking mode.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return err
	}
	if opErr != nil {
		return opErr
	}
	return nil
}
