package transfer

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/ferry-nomad/ferry/driver/catalog"
)

// pushGuard bounds a push while it arrives, before its manifest tells its
// size: by the size its record announces when the push began after the
// dump, by Limits.MaxCheckpointSize, and by the free space of the incoming
// filesystem less Limits.MinFreeSpace, looked at again before each frame
// is written (other transfers write there too).
type pushGuard struct {
	// incoming is where the free space is looked at: the incoming
	// directory, which operators know, on the filesystem the push fills.
	incoming  string
	limits    Limits
	announced int64
}

// sizeRefusal reports whether err refuses a checkpoint for its size or the
// space it needs.
func sizeRefusal(err error) bool {
	return errors.Is(err, ErrTooLarge) || errors.Is(err, ErrNoSpace)
}

// admitPush checks, before a byte of the push of rec into dir is kept,
// that the checkpoint may fit, and returns the guard of the rest.
func (s *Server) admitPush(dir string, rec *catalog.Record) (*pushGuard, error) {
	g := &pushGuard{incoming: s.Incoming, limits: s.Limits.withDefaults(), announced: rec.Bytes}
	if g.announced > 0 && g.limits.MaxCheckpointSize > 0 && g.announced > g.limits.MaxCheckpointSize {
		return nil, refuse(http.StatusRequestEntityTooLarge, "%w", tooLarge(g.announced, g.limits.MaxCheckpointSize))
	}
	sp, err := statSpace(g.incoming)
	if err != nil {
		return nil, err
	}
	// A push rewrites the files an earlier one left.
	need, what := max(g.announced-dirBytes(dir), 1), "a push needs room"
	if g.announced > 0 {
		what = fmt.Sprintf("the checkpoint needs %s", formatBytes(g.announced))
	}
	if sp.room(g.limits) < need {
		return nil, refuse(http.StatusInsufficientStorage, "%w", noSpace(what, sp, g.limits))
	}
	return g, nil
}

// admit checks that n more bytes may be written after received.
func (g *pushGuard) admit(received, n int64) error {
	total := received + n
	if g.announced > 0 && total > g.announced {
		return refuse(http.StatusRequestEntityTooLarge, "%w: the push brings more than the %d bytes its record announces",
			ErrTooLarge, g.announced)
	}
	if max := g.limits.MaxCheckpointSize; max > 0 && total > max {
		return refuse(http.StatusRequestEntityTooLarge, "%w", tooLarge(total, max))
	}
	if n == 0 {
		return nil
	}
	sp, err := statSpace(g.incoming)
	if err != nil {
		return err
	}
	if sp.room(g.limits) < n {
		return refuse(http.StatusInsufficientStorage, "%w", noSpace(
			fmt.Sprintf("the push needs more than %s", formatBytes(total)), sp, g.limits))
	}
	return nil
}
