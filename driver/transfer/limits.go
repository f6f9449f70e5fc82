package transfer

import "time"

// Defaults of Limits.
const (
	// DefaultIdleTimeout is how long a transfer's peer may send or read
	// nothing before the transfer fails.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultHeaderTimeout bounds a connection's TLS handshake and the
	// reading of a request's headers.
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultKeepAlive is how long the server keeps a connection that
	// carries no request. It is longer than the idle connections of
	// NewClient live (90s), so that a client never sends a push on a
	// connection the server is closing.
	DefaultKeepAlive = 2 * time.Minute
	// DefaultMaxConnections bounds the connections a server holds.
	DefaultMaxConnections = 64
	// DefaultMinFreeSpace is what a push or a fetch leaves free on the
	// filesystem it writes to by default, or 5% of the filesystem when
	// that is less (see Limits.MinFreeSpace).
	DefaultMinFreeSpace = 256 << 20

	// maxHeaderBytes bounds a request's headers: a transfer's carry a
	// credential and a range, nothing more.
	maxHeaderBytes = 16 << 10
)

// Limits bound what transfers may take of a node: how long a peer may
// stall, how many connections the server holds, and how much of the disk a
// checkpoint may fill. A zero field takes its default. The same Limits
// apply to a node's Server and, through WithLimits, to its pushes and
// fetches.
type Limits struct {
	// IdleTimeout is how long a peer may send nothing (a push's source, a
	// fetch's source) or read nothing (a push's destination, a fetching
	// node) before the transfer fails with ErrStalled. It bounds a stall,
	// never a transfer: one that keeps moving, however slowly, runs as long
	// as the move's context allows. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// HeaderTimeout bounds a connection's TLS handshake and the reading of
	// each request's headers: a client that connects and sends nothing is
	// closed then. Default DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// KeepAlive is how long the server keeps a connection that carries no
	// request. Default DefaultKeepAlive.
	KeepAlive time.Duration
	// MaxConnections bounds the connections the server holds at once,
	// idle ones included; more wait to be accepted, until one closes or
	// their client gives up (NewClient's after its TLS handshake timeout,
	// 10s; Fetch then tries again). Default DefaultMaxConnections.
	MaxConnections int
	// MaxCheckpointSize, when positive, is the largest checkpoint (the sum
	// of its files' sizes) a node receives or fetches. Default: none, the
	// free space alone bounds it.
	MaxCheckpointSize int64
	// MinFreeSpace is what a push or a fetch leaves free on the filesystem
	// it writes to, in bytes; negative for nothing. Default: the lesser of
	// DefaultMinFreeSpace and 5% of the filesystem's size.
	MinFreeSpace int64
}

// withDefaults returns l with its zero fields set to their defaults.
func (l Limits) withDefaults() Limits {
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.HeaderTimeout <= 0 {
		l.HeaderTimeout = DefaultHeaderTimeout
	}
	if l.KeepAlive <= 0 {
		l.KeepAlive = DefaultKeepAlive
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	return l
}

// minFree is what must stay free on a filesystem of size bytes.
func (l Limits) minFree(size uint64) uint64 {
	switch {
	case l.MinFreeSpace < 0:
		return 0
	case l.MinFreeSpace > 0:
		return uint64(l.MinFreeSpace)
	}
	return min(DefaultMinFreeSpace, size/20)
}

// Option configures a Push or a Fetch.
type Option func(*options)

type options struct {
	limits Limits
}

// WithLimits applies limits to a push (its IdleTimeout) or a fetch (its
// IdleTimeout, MaxCheckpointSize and MinFreeSpace); without it, the
// defaults apply.
func WithLimits(limits Limits) Option {
	return func(o *options) { o.limits = limits }
}

func optionsOf(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.limits = o.limits.withDefaults()
	return o
}
