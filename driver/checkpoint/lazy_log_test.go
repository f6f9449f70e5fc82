package checkpoint

import (
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

// A lazy-pages log (-v4) read for what the daemon did: pages per process,
// faults served on demand, reads, exits; a process that exited needs none
// of its missing pages, one still running does.
func TestParseLazyLog(t *testing.T) {
	const log = `(00.206136) uffd: 1-12: Found 65543 pages to be handled by UFFD
(00.206200) uffd: 14-13: Found 9 pages to be handled by UFFD
(00.207299) uffd: 1-12: #PF at 0x2adfa000
(00.207303) pr1-1 Read 2adfa000 1 pages
(00.207362) uffd: 1-12: uffd_copy: 0x2adfa000/4096
(00.300000) pr1-1 Read 7f0000000000 16 pages
(00.400000) uffd: 14-13: EXIT
(00.556316) uffd: 1-12: UFFD transferred pages: (65543/65543)
(00.556320) uffd: 14-13: UFFD transferred pages: (2/9)
(00.556634) page-xfer: Disconnect from the page server
`
	p, err := parseLazyLog(strings.NewReader(log))
	must.NoError(t, err)
	must.Eq(t, LazyProgress{Pages: 65552, Transferred: 65545, Read: 17, Faults: 1, OnDemand: 1, Processes: 2, Exited: 1}, p)
	must.True(t, p.Complete())

	// The same, but the second process did not exit: 7 pages missing.
	p, err = parseLazyLog(strings.NewReader(strings.Replace(log, "(00.400000) uffd: 14-13: EXIT\n", "", 1)))
	must.NoError(t, err)
	must.Eq(t, int64(7), p.Missing)
	must.False(t, p.Complete())

	// Mid-way: no final counts yet.
	p, err = parseLazyLog(strings.NewReader(log[:strings.Index(log, "(00.400000)")]))
	must.NoError(t, err)
	must.False(t, p.Complete())
	must.Eq(t, int64(17), p.Read)
}
