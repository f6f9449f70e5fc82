package checkpoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"github.com/ferry-nomad/ferry/driver/runc"
	"golang.org/x/sys/unix"
)

// LazyPagesLog is the log of `criu lazy-pages`, in its work directory.
const LazyPagesLog = "lazy-pages.log"

// LazyPagesOptions say how to run `criu lazy-pages`, the destination's half
// of a lazy migration. CRIU has no RPC request for it, so it is run as a
// process.
type LazyPagesOptions struct {
	// CriuPath is the criu binary ("criu" searches PATH).
	CriuPath string
	// ImagesDir holds CRIU's images of the lazy dump (the source's
	// images: everything but the lazy memory).
	ImagesDir string
	// WorkDir is the restore's work directory (runc restore
	// --work-path): the restore finds the daemon's socket there.
	WorkDir string
	// Source is the source's page server, "host:port".
	Source string
	// TLS, when set, authenticates the page server and this client with
	// certificates of one CA; the source's must name the host of Source.
	TLS *runc.CriuTLS
}

// LazyPages is a `criu lazy-pages` daemon: it hands the restored task's
// memory to it page by page, on the task's faults (userfaultfd) and in the
// background, from the source's page server, and exits once every page
// arrived, or on the first failure.
type LazyPages struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
	stderr  bytes.Buffer
	once    sync.Once

	guardMu sync.Mutex
	guard   []int // copies of the daemon's userfaultfds (see Guard)
}

// StartLazyPages starts the daemon and returns once it listens for the
// restore (`runc restore --lazy-pages` with opts.WorkDir as its work
// path). The daemon connects to the source once the restore hands it the
// task's memory. ctx ending kills it.
func StartLazyPages(ctx context.Context, opts LazyPagesOptions) (*LazyPages, error) {
	host, port, err := net.SplitHostPort(opts.Source)
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: source %q: %w", opts.Source, err)
	}
	criu := opts.CriuPath
	if criu == "" {
		criu = "criu"
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	defer pr.Close()
	args := []string{"lazy-pages", "--page-server", "--address", host, "--port", port,
		"--images-dir", opts.ImagesDir, "--work-dir", opts.WorkDir,
		"--log-file", LazyPagesLog, "-v4", "--status-fd", "3"}
	if opts.TLS != nil {
		args = append(args, opts.TLS.Args()...)
	}
	l := &LazyPages{
		cmd:     exec.CommandContext(ctx, criu, args...),
		logPath: filepath.Join(opts.WorkDir, LazyPagesLog),
		done:    make(chan struct{}),
	}
	l.cmd.ExtraFiles = []*os.File{pw}
	l.cmd.Stderr = &l.stderr
	if err := l.cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	pw.Close()
	go func() {
		l.waitErr = l.cmd.Wait()
		close(l.done)
	}()
	var b [1]byte
	if _, err := io.ReadFull(pr, b[:]); err != nil {
		<-l.done
		return nil, fmt.Errorf("criu lazy-pages never listened: %w", l.failure())
	}
	return l, nil
}

// Pid is the daemon's process ID.
func (l *LazyPages) Pid() int { return l.cmd.Process.Pid }

// Stop kills the daemon and waits for it.
func (l *LazyPages) Stop() {
	l.once.Do(func() { _ = l.cmd.Process.Kill() })
	<-l.done
}

// Guard takes copies of the daemon's userfaultfds (pidfd_getfd), once the
// restore has handed them over, and keeps them until Release. When the
// daemon dies before every page arrived, the kernel then keeps the task's
// missing pages registered: a task touching one waits, instead of reading
// zeros, until it is killed. Without the copies the daemon's death closes
// the last of them and the missing pages read as zeros: the task would run
// on with holes in its memory. It returns how many it took; call it again
// to take those of processes forked since.
func (l *LazyPages) Guard() (int, error) {
	l.guardMu.Lock()
	defer l.guardMu.Unlock()
	pid := l.Pid()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return len(l.guard), fmt.Errorf("guard lazy pages: pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return len(l.guard), fmt.Errorf("guard lazy pages: %w", err)
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || target != "anon_inode:[userfaultfd]" {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			return len(l.guard), fmt.Errorf("guard lazy pages: pidfd_getfd %d of %d: %w", n, pid, err)
		}
		unix.CloseOnExec(fd)
		l.guard = append(l.guard, fd)
	}
	return len(l.guard), nil
}

// Release closes the copies Guard took: after a complete copy, or once the
// task is killed.
func (l *LazyPages) Release() {
	l.guardMu.Lock()
	defer l.guardMu.Unlock()
	for _, fd := range l.guard {
		_ = unix.Close(fd)
	}
	l.guard = nil
}

// LazyProgress is what a lazy-pages daemon did, from its log.
type LazyProgress struct {
	// Pages is how many pages the restored processes were to receive;
	// Transferred how many they did, by the daemon's final count; Read
	// how many it has read from the source so far.
	Pages, Transferred, Read int64
	// Faults is how many page faults of the task were served on demand;
	// OnDemand how many pages they brought (the rest came in the
	// background).
	Faults, OnDemand int64
	// Missing is how many pages never arrived in processes that did
	// not exit first (a process that exits needs none of its pages).
	Missing int64
	// Processes is how many processes the daemon served; Exited how
	// many of them exited during the copy.
	Processes, Exited int
}

// Complete reports whether every page arrived that a live process needed.
func (p LazyProgress) Complete() bool { return p.Processes > 0 && p.Missing == 0 }

// Result waits for the daemon to exit and says what it did. The error is
// nil only if it exited successfully having handed over every page; a
// successful exit with pages missing (the task died, or the source hung
// up early) is an error too.
func (l *LazyPages) Result() (LazyProgress, error) {
	<-l.done
	p, perr := l.Progress()
	if l.waitErr != nil {
		return p, l.failure()
	}
	if perr != nil {
		return p, fmt.Errorf("criu lazy-pages: %w", perr)
	}
	if !p.Complete() {
		return p, fmt.Errorf("criu lazy-pages exited with %d of %d pages transferred, %d missing in processes that did not exit",
			p.Transferred, p.Pages, p.Missing)
	}
	return p, nil
}

// Progress reads the daemon's log so far.
func (l *LazyPages) Progress() (LazyProgress, error) {
	f, err := os.Open(l.logPath)
	if err != nil {
		return LazyProgress{}, err
	}
	defer f.Close()
	return parseLazyLog(f)
}

// failure is the error of a daemon that exited unsuccessfully.
func (l *LazyPages) failure() error {
	err := l.waitErr
	if err == nil {
		err = errors.New("exited")
	}
	if tail := runc.CriuLogTail(l.logPath); tail != "" {
		return fmt.Errorf("criu lazy-pages: %w; %s: %s", err, LazyPagesLog, tail)
	}
	if msg := bytes.TrimSpace(l.stderr.Bytes()); len(msg) > 0 {
		return fmt.Errorf("criu lazy-pages: %w: %s", err, msg)
	}
	return fmt.Errorf("criu lazy-pages: %w", err)
}

// The lines of a lazy-pages log (-v4) that say what it did, per restored
// process ("uffd: <pid>-<fd>: ..."), and the page reads of the fault
// handler ("pr<pid>-<n> Read <hex address> <n> pages").
var (
	lazyFound       = regexp.MustCompile(`uffd: (\d+-\d+): Found (\d+) pages to be handled by UFFD`)
	lazyTransferred = regexp.MustCompile(`uffd: (\d+-\d+): UFFD transferred pages: \((\d+)/(\d+)\)`)
	lazyFault       = regexp.MustCompile(`uffd: (\d+-\d+): #PF at 0x([0-9a-f]+)`)
	lazyExit        = regexp.MustCompile(`uffd: (\d+-\d+): EXIT`)
	lazyRead        = regexp.MustCompile(`pr\d+-\d+ Read ([0-9a-f]+) (\d+) pages`)
)

// parseLazyLog reads a lazy-pages log. A page read at the address of the
// fault just before it was brought on demand. Each process's final count
// ("UFFD transferred pages") comes when the daemon ends.
func parseLazyLog(r io.Reader) (LazyProgress, error) {
	var p LazyProgress
	found := map[string]int64{}
	transferred := map[string]int64{}
	exited := map[string]bool{}
	fault := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := lazyFound.FindStringSubmatch(line); m != nil {
			found[m[1]], _ = strconv.ParseInt(m[2], 10, 64)
		} else if m := lazyTransferred.FindStringSubmatch(line); m != nil {
			transferred[m[1]], _ = strconv.ParseInt(m[2], 10, 64)
		} else if m := lazyExit.FindStringSubmatch(line); m != nil {
			exited[m[1]] = true
		} else if m := lazyFault.FindStringSubmatch(line); m != nil {
			p.Faults++
			fault = m[2]
		} else if m := lazyRead.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			p.Read += n
			if fault != "" && m[1] == fault {
				p.OnDemand += n
			}
			fault = ""
		}
	}
	for proc, n := range found {
		p.Pages += n
		p.Transferred += transferred[proc]
		p.Processes++
		switch {
		case exited[proc]:
			p.Exited++
		case transferred[proc] < n:
			p.Missing += n - transferred[proc]
		}
	}
	return p, sc.Err()
}
