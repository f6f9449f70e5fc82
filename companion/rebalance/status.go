package rebalance

import (
	"context"
	"slices"
	"time"

	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	consul "github.com/hashicorp/consul/api"
)

// Status is the rebalancer as the cluster sees it: who plans, every node's
// smoothed load, the moves in flight and the last moves, the checkpoint
// records and their reaping. `ferry-companion
// status` prints it; the agents serve it at /v1/status.
type Status struct {
	Leader   *Holder           `json:"leader"`
	Nodes    []load.Record     `json:"nodes"`
	InFlight []*migrate.Record `json:"in_flight"`
	Last     []*migrate.Record `json:"last_moves"` // newest first
	// Capacity is the pools' sizing as its last round saved it, if any
	// pool has a policy.
	Capacity *SavedCapacity `json:"capacity,omitempty"`
	// Checkpoints counts the drivers' checkpoint records by state, those
	// due for reaping and those reaped lately.
	Checkpoints *CheckpointStatus `json:"checkpoints,omitempty"`
	// Set by an agent serving /v1/status: itself, and its last round
	// when it is the planner.
	Self      *load.Record `json:"self,omitempty"`
	LastRound *RoundReport `json:"last_round,omitempty"`
}

// lastMoves is how many finished moves a status shows.
const lastMoves = 10

// ReadStatus reads the status from Consul.
func ReadStatus(ctx context.Context, c *consul.Client, lockKey, nodesPrefix string) (*Status, error) {
	holder, err := ReadHolder(ctx, c, lockKey)
	if err != nil {
		return nil, err
	}
	records, _, err := load.List(ctx, c, nodesPrefix)
	if err != nil {
		return nil, err
	}
	migrations, err := (&migrate.Records{Consul: c}).List(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Leader: holder, Nodes: records, InFlight: []*migrate.Record{}, Last: []*migrate.Record{}}
	sized, err := LoadCapacity(ctx, c)
	if err != nil {
		return nil, err
	}
	if len(sized.Pools) > 0 {
		st.Capacity = &sized
	}
	if st.Checkpoints, err = ReadCheckpointStatus(ctx, c, time.Now()); err != nil {
		return nil, err
	}
	for _, m := range slices.Backward(migrations) {
		if m.Result == migrate.ResultInProgress {
			st.InFlight = append(st.InFlight, m)
		} else if len(st.Last) < lastMoves {
			st.Last = append(st.Last, m)
		}
	}
	return st, nil
}

// Age is how long ago t was, rounded for display.
func Age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}
