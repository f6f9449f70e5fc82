package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Container statuses reported by runc.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusPaused  = "paused"
	StatusStopped = "stopped"
)

// State is runc's view of one container.
type State struct {
	ID      string    `json:"id"`
	Pid     int       `json:"pid"`
	Status  string    `json:"status"` // created, running, paused or stopped
	Bundle  string    `json:"bundle"`
	Created time.Time `json:"created"`
}

// State returns the state of container id. It returns an error wrapping
// ErrNotExist when runc does not know the container.
func (r *Runc) State(ctx context.Context, id string) (*State, error) {
	out, err := r.output(ctx, "state "+id, "state", id)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("runc state %s: decode %q: %w", id, truncate(string(out)), err)
	}
	return &s, nil
}

// List returns the state of every container under the runc root. A root
// that does not exist yet holds no containers.
func (r *Runc) List(ctx context.Context) ([]State, error) {
	if r.Root != "" {
		if _, err := os.Stat(r.Root); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
	}
	out, err := r.output(ctx, "list", "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var list []State
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("runc list: decode %q: %w", truncate(string(out)), err)
	}
	return list, nil
}
