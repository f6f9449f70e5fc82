package plugin

import (
	"errors"
	"net"
	"strconv"
	"testing"

	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/shoenig/test/must"
)

// transfer.page_server_ports is a port or a range, defaulted, and a bad
// one is refused naming the field.
func TestPageServerPortsConfig(t *testing.T) {
	var defaults Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {}`, &defaults)
	must.NoError(t, defaults.validate())
	must.Eq(t, portRange{4710, 4729}, defaults.Transfer.pagePorts)

	for _, tc := range []struct {
		value string
		want  portRange
		err   bool
	}{
		{"5000-5009", portRange{5000, 5009}, false},
		{" 6000 - 6001 ", portRange{6000, 6001}, false},
		{"7000", portRange{7000, 7000}, false},
		{"5009-5000", portRange{}, true},
		{"0-10", portRange{}, true},
		{"65535-65536", portRange{}, true},
		{"many", portRange{}, true},
		{"5000-", portRange{}, true},
	} {
		var c Config
		hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {
  transfer { page_server_ports = "`+tc.value+`" }
}`, &c)
		err := c.validate()
		if tc.err {
			must.ErrorContains(t, err, `transfer.page_server_ports: "`+tc.value+`" must be a port or a range of ports "lo-hi"`)
			continue
		}
		must.NoError(t, err)
		must.Eq(t, tc.want, c.Transfer.pagePorts)
	}
}

// A port is handed out once until released, and never while something
// listens at it.
func TestPagePorts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	busy := ln.Addr().(*net.TCPAddr).Port
	// The range: the busy port and the one after it, if free.
	free := busy + 1
	if l, err := net.Listen("tcp", ":"+strconv.Itoa(free)); err != nil {
		t.Skipf("port %d in use", free)
	} else {
		l.Close()
	}
	p := newPagePorts(portRange{busy, free})

	port, release, err := p.take()
	must.NoError(t, err)
	must.Eq(t, free, port, must.Sprint("the port something listens at is skipped"))
	_, _, err = p.take()
	must.True(t, errors.Is(err, errNoPagePort), must.Sprintf("a held port is not handed out twice: %v", err))
	must.ErrorContains(t, err, strconv.Itoa(busy)+"-"+strconv.Itoa(free))

	release()
	release() // twice is harmless
	again, releaseAgain, err := p.take()
	must.NoError(t, err)
	must.Eq(t, free, again)
	releaseAgain()
}
