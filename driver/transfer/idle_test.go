package transfer_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// testIdle is the idle timeout of these tests: short, so that a stall is
// cut quickly.
const testIdle = 300 * time.Millisecond

// serveTLS serves h over TLS as node name at ip would, until the test
// ends; it returns the server's address.
func (w *world) serveTLS(t *testing.T, name, ip string, h http.Handler) string {
	t.Helper()
	nc := w.ca.Node(t, name, ip)
	serverTLS, _, err := transfer.TLS{CAFile: w.ca.File, CertFile: nc.CertFile, KeyFile: nc.KeyFile}.Configs()
	must.NoError(t, err)
	ln, err := net.Listen("tcp", ip+":0")
	must.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ln, serverTLS)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// stallWriter passes the first left bytes of a response, flushed, then
// blocks until the request ends or stop is closed.
type stallWriter struct {
	http.ResponseWriter
	left int
	ctx  context.Context
	stop <-chan struct{}
}

func (s *stallWriter) Write(p []byte) (int, error) {
	if s.left <= 0 {
		http.NewResponseController(s.ResponseWriter).Flush()
		select {
		case <-s.ctx.Done():
		case <-s.stop:
		}
		return 0, errors.New("stalled")
	}
	n := min(len(p), s.left)
	s.left -= n
	n, err := s.ResponseWriter.Write(p[:n])
	if err != nil || n == len(p) {
		return n, err
	}
	m, err := s.Write(p[n:])
	return n + m, err
}

// A peer that stops sending or reading fails the transfer once the idle
// timeout passes, on each side of a push and of a fetch; what a push
// brought stays for a fetch to resume.
func TestIdleTimeout(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	hasty := w.nodeWith("hasty", "127.0.0.4", transfer.Limits{IdleTimeout: testIdle})
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	idle := transfer.WithLimits(transfer.Limits{IdleTimeout: testIdle})

	cases := []struct {
		name string
		// run returns the transfer's error and the directory it wrote.
		run  func(t *testing.T) (string, error)
		want string
		// kept: what the transfer wrote stays, without a manifest.
		kept bool
		// resetOK: the destination answers that it gave up and closes the
		// connection; the source, still writing, may see the reset
		// before the answer (the destination's side is checked in run).
		resetOK bool
	}{{
		name: "push source sends some bytes then nothing",
		run: func(t *testing.T) (string, error) {
			f := newFixture(t)
			g, secret := grant(hasty, time.Minute)
			alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
			dir := dirOf(t, hasty.incoming(), alloc)
			p := transfer.StartPush(testContext(t), src.client, hasty.addr, secret, alloc, testTask)
			must.NoError(t, p.Write("images/pages-1.img", 0, f.files["images/pages-1.img"][:1<<20]))
			must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
				fi, err := os.Stat(filepath.Join(dir, "images", "pages-1.img"))
				return err == nil && fi.Size() == 1<<20
			}), wait.Timeout(10*time.Second), wait.Gap(5*time.Millisecond)))
			// Nothing more: the destination gives up.
			must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool { return !hasty.server.Receiving(dir) }),
				wait.Timeout(10*time.Second), wait.Gap(10*time.Millisecond)))
			_, err := p.Finish(testContext(t), f.raw)
			return dir, err
		},
		want:    "the other node sent nothing for 300ms",
		kept:    true,
		resetOK: true,
	}, {
		name: "push destination reads some bytes then nothing",
		run: func(t *testing.T) (string, error) {
			addr := w.serveTLS(t, "sink", "127.0.0.5", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadFull(r.Body, make([]byte, 1<<10))
				select {
				case <-r.Context().Done():
				case <-stop:
				}
			}))
			g, secret := grant(dst, time.Minute)
			alloc := w.move(t, src, catalog.StateCheckpointing, newFixture(t), g, nil)
			p := transfer.StartPush(testContext(t), src.client, addr, secret, alloc, testTask, idle)
			chunk := make([]byte, 1<<20)
			// Far more than the connection's buffers hold.
			for off := int64(0); off < 1<<30; off += 1 << 20 {
				if err := p.Write("images/pages-1.img", off, chunk); err != nil {
					return "", err
				}
			}
			return "", errors.New("the push took 1 GiB that no one read")
		},
		want: "the destination read nothing for 300ms",
	}, {
		name: "fetch source sends some bytes then nothing",
		run: func(t *testing.T) (string, error) {
			f := newFixture(t)
			g, secret := grant(dst, time.Minute)
			alloc := w.move(t, src, catalog.StateRestoring, f, nil, g)
			f.write(t, dirOf(t, src.checkpoints(), alloc))
			handler := src.server.Handler()
			// The source's own server, answering from the source's address
			// as far as the grant is concerned, whose file responses stall.
			addr := w.serveTLS(t, "src-stalling", "127.0.0.2", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/pages-1.img") {
					rw = &stallWriter{ResponseWriter: rw, left: 1 << 20, ctx: r.Context(), stop: stop}
				}
				handler.ServeHTTP(rw, r)
			}))
			dest := dirOf(t, dst.incoming(), alloc)
			_, err := transfer.Fetch(testContext(t), dst.client, addr, secret, alloc, testTask, f.digest(), dest, nil, idle)
			return dest, err
		},
		want: "images/pages-1.img: after 3 attempts: transfer stalled: the source sent nothing for 300ms",
		kept: true,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := tc.run(t)
			if tc.resetOK && !errors.Is(err, transfer.ErrStalled) {
				must.ErrorIs(t, err, syscall.ECONNRESET)
			} else {
				must.ErrorIs(t, err, transfer.ErrStalled)
				must.ErrorContains(t, err, tc.want)
			}
			if tc.kept {
				assertNoManifest(t, dir)
				must.FileExists(t, filepath.Join(dir, "images", "pages-1.img"))
			}
		})
	}

	// A fetching node that stops reading: the serving side closes the
	// connection, and the response ends short.
	t.Run("fetching node reads some bytes then nothing", func(t *testing.T) {
		f := newFixture(t)
		f.files["images/pages-1.img"] = make([]byte, 64<<20)
		f.raw = manifestOf(t, f.files)
		g, secret := grant(dst, time.Minute)
		alloc := w.move(t, hasty, catalog.StateRestoring, f, nil, g)
		f.write(t, dirOf(t, hasty.checkpoints(), alloc))
		req, err := http.NewRequest(http.MethodGet, "https://"+hasty.addr+"/v1/checkpoints/"+alloc+"/"+testTask+"/files/images/pages-1.img", nil)
		must.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := dst.client.Do(req)
		must.NoError(t, err)
		defer resp.Body.Close()
		must.Eq(t, http.StatusOK, resp.StatusCode)
		// Far longer than the idle timeout: the server's writes stall on
		// full buffers meanwhile.
		time.Sleep(8 * testIdle)
		n, err := io.Copy(io.Discard, resp.Body)
		must.Error(t, err)
		must.Less(t, int64(64<<20), n)
	})
}
