package transfer_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/shoenig/test/must"
)

// dialTLS opens a TLS connection to n's server as from, handshake done.
func dialTLS(t *testing.T, from, n *node) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from.ip)}}
	c, err := tls.DialWithDialer(d, "tcp", n.addr, from.clientTLS)
	must.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// health asks for /v1/health over c and returns the status line.
func health(t *testing.T, c net.Conn) string {
	t.Helper()
	must.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err := io.WriteString(c, "GET /v1/health HTTP/1.1\r\nHost: ferry\r\n\r\n")
	must.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	must.NoError(t, err)
	return strings.TrimSpace(line)
}

// The server holds at most MaxConnections: one more waits, unaccepted,
// until one closes.
func TestMaxConnections(t *testing.T) {
	w := newWorld(t)
	client := w.node("client", "127.0.0.2")
	server := w.nodeWith("server", "127.0.0.3", transfer.Limits{MaxConnections: 1})

	first := dialTLS(t, client, server)
	must.Eq(t, "HTTP/1.1 200 OK", health(t, first))

	type dialed struct {
		c   *tls.Conn
		err error
	}
	second := make(chan dialed, 1)
	go func() {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client.ip)}}
		c, err := tls.DialWithDialer(d, "tcp", server.addr, client.clientTLS)
		second <- dialed{c, err}
	}()
	select {
	case d := <-second:
		t.Fatalf("a second connection was accepted while the first is open (%v)", d.err)
	case <-time.After(500 * time.Millisecond):
	}
	must.NoError(t, first.Close())
	var d dialed
	select {
	case d = <-second:
	case <-time.After(20 * time.Second):
		t.Fatal("the second connection was not accepted once the first closed")
	}
	must.NoError(t, d.err)
	defer d.c.Close()
	must.Eq(t, "HTTP/1.1 200 OK", health(t, d.c))
}

// A client that connects and sends nothing is closed after HeaderTimeout,
// before or after its TLS handshake; headers larger than 16 KiB are
// refused.
func TestHeaderLimits(t *testing.T) {
	w := newWorld(t)
	client := w.node("client", "127.0.0.2")
	server := w.nodeWith("server", "127.0.0.3", transfer.Limits{HeaderTimeout: 300 * time.Millisecond})

	cases := []struct {
		name string
		dial func(t *testing.T) net.Conn
	}{{
		name: "no TLS handshake",
		dial: func(t *testing.T) net.Conn {
			c, err := net.DialTimeout("tcp", server.addr, 5*time.Second)
			must.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			return c
		},
	}, {
		name: "no request",
		dial: func(t *testing.T) net.Conn { return dialTLS(t, client, server) },
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.dial(t)
			must.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
			_, err := io.ReadAll(c)
			// Closed by the server, not by the deadline above.
			must.False(t, errors.Is(err, os.ErrDeadlineExceeded), must.Sprintf("read: %v", err))
		})
	}

	t.Run("headers too large", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "https://"+server.addr+"/v1/health", nil)
		must.NoError(t, err)
		req.Header.Set("X-Padding", strings.Repeat("x", 64<<10))
		resp, err := client.client.Do(req)
		must.NoError(t, err)
		resp.Body.Close()
		must.Eq(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	})
}
