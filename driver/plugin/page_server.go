package plugin

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
)

// defaultPageServerPorts is transfer.page_server_ports when the block does
// not set it: room for 20 lazy moves off the node at once.
const defaultPageServerPorts = "4710-4729"

// portRange is an inclusive range of TCP ports, "lo-hi" or one port.
type portRange struct{ lo, hi int }

// parsePortRange reads s for field; the error names the field and the form.
func parsePortRange(field, s string) (portRange, error) {
	bad := fmt.Errorf("%s: %q must be a port or a range of ports \"lo-hi\", e.g. %q", field, s, defaultPageServerPorts)
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	var r portRange
	var err1, err2 error
	r.lo, err1 = strconv.Atoi(strings.TrimSpace(lo))
	r.hi, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil || r.lo < 1 || r.hi > 65535 || r.lo > r.hi {
		return portRange{}, bad
	}
	return r, nil
}

// pagePorts hands out the ports a lazy move's CRIU page server listens at:
// each is free when taken (nothing listens at it, and no other move of
// this driver holds it) and held until released.
type pagePorts struct {
	r    portRange
	mu   sync.Mutex
	held map[int]bool
}

func newPagePorts(r portRange) *pagePorts { return &pagePorts{r: r, held: map[int]bool{}} }

// errNoPagePort: every port of the range is taken.
var errNoPagePort = errors.New("no free port in transfer.page_server_ports")

// take returns a free port and the function that releases it. CRIU listens
// on every address of the node: the port is checked the same way.
func (p *pagePorts) take() (int, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.r.hi - p.r.lo + 1
	first := rand.IntN(n)
	for i := range n {
		port := p.r.lo + (first+i)%n
		if p.held[port] {
			continue
		}
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		_ = ln.Close()
		p.held[port] = true
		return port, sync.OnceFunc(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			delete(p.held, port)
		}), nil
	}
	return 0, nil, fmt.Errorf("%w (%d-%d)", errNoPagePort, p.r.lo, p.r.hi)
}
