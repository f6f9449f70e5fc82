package load

import (
	"context"
	"fmt"
	"time"
)

// closeTimeout bounds the removal of the record once Run's context ended.
const closeTimeout = 10 * time.Second

// minRoundTimeout is the least time one round (sample and publish) is given,
// however short the interval.
const minRoundTimeout = 5 * time.Second

// Run samples the node at once and then every interval, offers each record
// to the publisher, which writes it after its policy (on a change beyond
// the dead band, and at every heartbeat: see Publisher.Offer), and hands it
// to onRecord (which may be nil), e.g. for metrics or a status page.
// onRecord sees every record sampled, written or not. A failed round is
// logged and the next one tried; when ctx ends, Run closes the publisher,
// which deletes the record, and returns nil, or the error of closing.
func Run(ctx context.Context, s *Sampler, p *Publisher, interval time.Duration, onRecord func(Record)) error {
	if interval <= 0 {
		return fmt.Errorf("load: sample interval %s must be positive", interval)
	}
	logger := s.logger.With("node_id", s.cfg.NodeID)
	pol := p.Policy()
	logger.Info("publishing node load", "interval", interval, "window", s.cfg.Window,
		"source", s.cfg.Source, "key", p.Key(s.cfg.NodeID),
		"heartbeat", pol.Heartbeat, "dead_band", pol.DeadBand, "session_ttl", p.ttl)

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	failures := 0
	for {
		err := round(ctx, s, p, max(interval, minRoundTimeout), onRecord)
		switch {
		case ctx.Err() != nil:
			// Shutting down: a round cut short is no failure.
		case err != nil:
			failures++
			logger.Warn("load round failed", "error", err, "consecutive_failures", failures)
		case failures > 0:
			logger.Info("load published again", "after_failures", failures)
			failures = 0
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			defer cancel()
			if err := p.Close(cctx); err != nil {
				return fmt.Errorf("load: remove record of node %s: %w", s.cfg.NodeID, err)
			}
			logger.Info("node load record removed")
			return nil
		case <-ticker.C:
		}
	}
}

// round takes one sample and offers it to the publisher, within timeout.
func round(ctx context.Context, s *Sampler, p *Publisher, timeout time.Duration, onRecord func(Record)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rec, err := s.Sample(ctx)
	if err != nil {
		return err
	}
	why, perr := p.Offer(ctx, rec)
	if why != WroteNothing {
		s.logger.Trace("node load written", "node_id", rec.NodeID, "why", why)
	}
	if onRecord != nil {
		onRecord(rec)
	}
	return perr
}
