// Package migrate moves one allocation to another node and follows it to the
// end: the path shared by `ferry-companion migrate` and the rebalancer.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-uuid"
	nomad "github.com/hashicorp/nomad/api"
)

// Request is one move.
type Request struct {
	AllocID    string        // full ID or a unique prefix
	TargetNode string        // node ID, ID prefix or name; empty lets Nomad choose
	Timeout    time.Duration // for the replacement to run
	Reason     string        // recorded with the outcome

	// Set by the rebalancer: how the move was planned, and what the
	// allocation holds on its target while the move is in flight.
	Kind          string
	CPU, MemoryMB float64
	// Fence, when set, makes the move start only while the planner still
	// holds its lock: the first record is written under it, and nothing
	// is touched if that write fails.
	Fence *Fence
}

// Result is how a move went.
type Result struct {
	MigrationID  string
	OldAlloc     string
	NewAlloc     string
	Source       string // node name
	Destination  string // node name
	Downtime     time.Duration
	Bytes        int64
	Restored     bool   // the task resumed from its checkpoint
	Reason       string // why not, when not restored
	TargetMissed bool   // Nomad placed the replacement elsewhere than TargetNode

	destinationID string
}

// DefaultTimeout is how long a move may take when its request gives no
// timeout.
const DefaultTimeout = 5 * time.Minute

// Results recorded in a migration's record.
const (
	ResultInProgress = "in_progress"
	ResultRestored   = "restored"   // resumed from its checkpoint
	ResultColdStart  = "cold_start" // started fresh on the destination
	ResultFailed     = "failed"
	ResultAbandoned  = "abandoned" // its mover died; see Abandon
)

// Mover moves allocations through Nomad's API and records the moves in the
// catalogue.
type Mover struct {
	Nomad   *nomad.Client
	Catalog *catalog.Catalog // the drivers' checkpoint records, read
	Records *Records         // its own records
	Logger  hclog.Logger
	Poll    time.Duration // how often to look at the replacement; default 500ms

	// afterChange, when set, is called right after each change the move
	// makes to Nomad (one of the step constants): tests stop the mover
	// there, as if it had died.
	afterChange func(step string)
}

// The changes a move makes to Nomad, each recorded as intended before it
// is made (see steer).
const (
	stepTargetMarked     = "target_marked"
	stepSourceIneligible = "source_ineligible"
	stepAllocStopped     = "alloc_stopped"
)

// changed tells the test hook, if any, that step was just made.
func (m *Mover) changed(step string) {
	if m.afterChange != nil {
		m.afterChange(step)
	}
}

// Move stops the allocation so that Nomad migrates it (the driver
// checkpoints it on the way out), steering the replacement to TargetNode when
// given, and follows the replacement until it runs. The source node's
// eligibility and the target's metadata are restored whatever happens.
func (m *Mover) Move(ctx context.Context, req Request) (*Result, error) {
	if req.Timeout <= 0 {
		req.Timeout = DefaultTimeout
	}
	alloc, err := m.findAlloc(ctx, req.AllocID)
	if err != nil {
		return nil, err
	}
	if alloc.ClientStatus != nomad.AllocClientStatusRunning {
		return nil, fmt.Errorf("allocation %s is %s, not running", shortID(alloc.ID), alloc.ClientStatus)
	}
	id, _ := uuid.GenerateUUID()
	res := &Result{MigrationID: id, OldAlloc: alloc.ID, Source: alloc.NodeName}
	rec := &Record{
		ID: id, AllocID: alloc.ID, JobID: alloc.JobID,
		SourceNode: alloc.NodeName, SourceNodeID: alloc.NodeID,
		Reason: req.Reason, Kind: req.Kind, CPU: req.CPU, MemoryMB: req.MemoryMB,
		StartedAt: time.Now(), Deadline: time.Now().Add(req.Timeout),
	}

	var target *nomad.Node
	if req.TargetNode != "" {
		if target, err = m.findNode(ctx, req.TargetNode); err != nil {
			return nil, err
		}
		if target.ID == alloc.NodeID {
			return nil, fmt.Errorf("allocation %s already runs on %s", shortID(alloc.ID), target.Name)
		}
		rec.TargetNode, rec.TargetNodeID = target.Name, target.ID
	}
	if req.Fence != nil {
		rec.Result = ResultInProgress
		if err := m.Records.Put(ctx, rec, req.Fence); err != nil {
			return nil, fmt.Errorf("move %s: %w", shortID(alloc.ID), err)
		}
	} else {
		m.record(ctx, rec, ResultInProgress)
	}

	err = m.steer(ctx, rec, req.Fence)
	defer m.unsteer(rec) // finish undoes it; this is for a panic
	if err != nil {
		m.finish(ctx, rec, res, err)
		return nil, err
	}

	// Like steering, the stop is recorded before it is made: a move
	// abandoned without it never stopped its allocation.
	rec.AllocStopped = true
	if err := m.intend(ctx, rec, req.Fence); err != nil {
		rec.AllocStopped = false
		err = fmt.Errorf("allocation %s not stopped: %w", shortID(alloc.ID), err)
		m.finish(ctx, rec, res, err)
		return nil, err
	}
	start := time.Now()
	if _, err := m.Nomad.Allocations().Stop(alloc, (&nomad.QueryOptions{}).WithContext(ctx)); err != nil {
		err = fmt.Errorf("stop allocation %s: %w", shortID(alloc.ID), err)
		m.finish(ctx, rec, res, err)
		return nil, err
	}
	m.changed(stepAllocStopped)
	m.Logger.Info("allocation stopped for migration", "alloc_id", alloc.ID, "source", alloc.NodeName, "target", rec.TargetNode)

	next, err := m.follow(ctx, alloc, rec.Deadline, res)
	if err != nil {
		m.finish(ctx, rec, res, err)
		return res, err
	}
	res.Downtime = time.Since(start)
	res.NewAlloc, res.Destination, res.destinationID = next.ID, next.NodeName, next.NodeID
	res.TargetMissed = target != nil && next.NodeID != target.ID
	m.outcome(next, res)
	m.finish(ctx, rec, res, nil)
	return res, nil
}

func (m *Mover) findAlloc(ctx context.Context, id string) (*nomad.Allocation, error) {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	if len(id) < 36 {
		stubs, _, err := m.Nomad.Allocations().PrefixList(id)
		if err != nil {
			return nil, fmt.Errorf("find allocation %q: %w", id, err)
		}
		switch len(stubs) {
		case 0:
			return nil, fmt.Errorf("no allocation with ID prefix %q", id)
		case 1:
			id = stubs[0].ID
		default:
			return nil, fmt.Errorf("allocation ID prefix %q is ambiguous: give more characters", id)
		}
	}
	a, _, err := m.Nomad.Allocations().Info(id, q)
	if err != nil {
		return nil, fmt.Errorf("read allocation %s: %w", id, err)
	}
	return a, nil
}

func (m *Mover) findNode(ctx context.Context, ref string) (*nomad.Node, error) {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	nodes, _, err := m.Nomad.Nodes().List(q)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var match []*nomad.NodeListStub
	for _, n := range nodes {
		if n.Name == ref || n.ID == ref {
			match = []*nomad.NodeListStub{n}
			break
		}
		if len(ref) >= 4 && len(n.ID) >= len(ref) && n.ID[:len(ref)] == ref {
			match = append(match, n)
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("--node %q: no such node (give a node name or ID)", ref)
	case 1:
	default:
		return nil, fmt.Errorf("--node %q matches %d nodes: give more characters", ref, len(match))
	}
	n, _, err := m.Nomad.Nodes().Info(match[0].ID, q)
	if err != nil {
		return nil, fmt.Errorf("read node %s: %w", match[0].Name, err)
	}
	if n.Status != nomad.NodeStatusReady || n.SchedulingEligibility != nomad.NodeSchedulingEligible || n.DrainStrategy != nil {
		return nil, fmt.Errorf("--node %s cannot take work: status %s, eligibility %s", n.Name, n.Status, n.SchedulingEligibility)
	}
	return n, nil
}

// steer marks the target with sdk.MetaMigrateTarget and makes the source
// ineligible, so the replacement neither returns to the source nor misses
// the target. Each change is first noted in rec and recorded in Consul
// (under fence when not nil), and only made once that record is written: a
// mover that dies at any point leaves a record naming every change it may
// have made, for Abandon to undo. When a record cannot be written, the
// change is not made and steer fails. A change noted but not made (its
// call failed, or the mover died before it) is harmless to undo: the mark
// is removed where it may be missing, and the source, made ineligible only
// when it was eligible, is made eligible again.
func (m *Mover) steer(ctx context.Context, rec *Record, fence *Fence) error {
	ctx, cancel := context.WithTimeout(ctx, nodeCallTimeout)
	defer cancel()
	q, w := (&nomad.QueryOptions{}).WithContext(ctx), (&nomad.WriteOptions{}).WithContext(ctx)
	src, _, err := m.Nomad.Nodes().Info(rec.SourceNodeID, q)
	if err != nil {
		return fmt.Errorf("read source node: %w", err)
	}
	if rec.TargetNodeID != "" {
		rec.TargetMarked = true
		if err := m.intend(ctx, rec, fence); err != nil {
			rec.TargetMarked = false
			return fmt.Errorf("target %s not marked: %w", rec.TargetNode, err)
		}
		yes := "true"
		if err := SetNodeMeta(ctx, m.Nomad, rec.TargetNodeID, sdk.MetaMigrateTarget, &yes); err != nil {
			return fmt.Errorf("mark target %s: %w", rec.TargetNode, err)
		}
		m.changed(stepTargetMarked)
	}
	if src.SchedulingEligibility == nomad.NodeSchedulingEligible {
		rec.SourceMadeIneligible = true
		if err := m.intend(ctx, rec, fence); err != nil {
			rec.SourceMadeIneligible = false
			return fmt.Errorf("source %s not made ineligible: %w", src.Name, err)
		}
		if _, err := m.Nomad.Nodes().ToggleEligibility(src.ID, false, w); err != nil {
			return fmt.Errorf("make source %s ineligible: %w", src.Name, err)
		}
		m.changed(stepSourceIneligible)
	}
	return nil
}

// intend records rec, still in progress, with a change it is about to
// make to Nomad, under fence when not nil. Without records (nothing to
// record in) it does nothing.
func (m *Mover) intend(ctx context.Context, rec *Record, fence *Fence) error {
	if m.Records == nil {
		return nil
	}
	rec.Result = ResultInProgress
	if err := m.Records.Put(ctx, rec, fence); err != nil {
		return fmt.Errorf("record the intent first: %w", err)
	}
	return nil
}

// unsteer undoes what steer noted in rec, whatever became of the move's
// context.
func (m *Mover) unsteer(rec *Record) {
	deadline := time.Now().Add(unsteerTimeout)
	for wait := time.Second; ; wait = min(2*wait, 5*time.Second) {
		m.unsteerOnce(rec)
		if !rec.SourceMadeIneligible && !rec.TargetMarked {
			return
		}
		// The node's own agent applies its metadata: a client restarting
		// is back within seconds.
		if time.Now().Add(wait).After(deadline) {
			m.Logger.Error("steering of a move not undone", "migration_id", rec.ID,
				"source_ineligible", rec.SourceMadeIneligible, "target_marked", rec.TargetMarked)
			return
		}
		time.Sleep(wait)
	}
}

// unsteerTimeout bounds the attempts to undo a move's steering.
const unsteerTimeout = 2 * time.Minute

// unsteerOnce tries once to undo each change still noted in rec.
func (m *Mover) unsteerOnce(rec *Record) {
	ctx, cancel := context.WithTimeout(context.Background(), nodeCallTimeout)
	defer cancel()
	w := (&nomad.WriteOptions{}).WithContext(ctx)
	if rec.SourceMadeIneligible {
		if _, err := m.Nomad.Nodes().ToggleEligibility(rec.SourceNodeID, true, w); err != nil {
			m.Logger.Warn("restore source eligibility", "node", rec.SourceNode, "error", err)
		} else {
			rec.SourceMadeIneligible = false
		}
	}
	if rec.TargetMarked {
		// Until the servers see it gone, it would steer other moves.
		if err := SetNodeMeta(ctx, m.Nomad, rec.TargetNodeID, sdk.MetaMigrateTarget, nil); err != nil {
			m.Logger.Warn("unmark target node", "node", rec.TargetNode, "error", err)
		} else {
			rec.TargetMarked = false
		}
	}
}

// Abandoned reports whether rec is a move still recorded in progress well
// after its deadline: its mover died on the way.
func Abandoned(rec *Record, now time.Time) bool {
	if rec.Result != ResultInProgress {
		return false
	}
	deadline := rec.Deadline
	if deadline.IsZero() { // recorded before moves had deadlines
		deadline = rec.StartedAt.Add(DefaultTimeout)
	}
	return now.After(deadline.Add(abandonGrace))
}

// abandonGrace is how long after its deadline a move in progress counts as
// abandoned.
const abandonGrace = time.Minute

// Abandon closes the record of a move whose mover died: it undoes the
// steering the record names (every change the mover may have made, since
// each was recorded before it was made) and records the move as
// abandoned, saying whether the allocation had been stopped. When some of
// the steering cannot be undone yet (Nomad unreachable), the record stays
// in progress with what remains, for the next call to finish.
func (m *Mover) Abandon(ctx context.Context, rec *Record) {
	m.unsteer(rec)
	if rec.SourceMadeIneligible || rec.TargetMarked {
		m.Logger.Warn("abandoned move: steering not undone yet, trying again later", "migration_id", rec.ID, "alloc_id", rec.AllocID,
			"source_ineligible", rec.SourceMadeIneligible, "target_marked", rec.TargetMarked)
		m.record(ctx, rec, ResultInProgress)
		return
	}
	rec.FinishedAt = time.Now()
	if rec.AllocStopped {
		rec.Reason = "abandoned: its mover stopped after stopping the allocation; " + m.replacementOutcome(ctx, rec) + "; the steering of the nodes was undone"
	} else {
		rec.Reason = "abandoned: its mover stopped before stopping the allocation, which still runs on " + rec.SourceNode + "; the steering of the nodes was undone"
	}
	m.Logger.Warn("abandoned move closed", "migration_id", rec.ID, "alloc_id", rec.AllocID, "source", rec.SourceNode, "target", rec.TargetNode, "alloc_stopped", rec.AllocStopped)
	m.recordFinal(ctx, rec, ResultAbandoned)
}

// replacementOutcome says what became of the stopped allocation of an
// abandoned move, and records its replacement in rec when one ran: the
// drivers move the task without the mover, and the planner's cooldown
// then covers the replacement too.
func (m *Mover) replacementOutcome(ctx context.Context, rec *Record) string {
	next, done, err := m.replacement(ctx, rec.AllocID)
	switch {
	case err != nil:
		return err.Error()
	case !done:
		return "no replacement runs yet"
	}
	rec.NewAllocID = next.ID
	var res Result
	m.outcome(next, &res)
	how := "restored from its checkpoint"
	if !res.Restored {
		how = "started fresh: " + res.Reason
	}
	return fmt.Sprintf("its replacement %s runs on %s, %s", shortID(next.ID), next.NodeName, how)
}

// follow waits for the allocation that replaces old to run, and notes the
// checkpoint's size from the catalogue while it waits, until deadline. When
// ctx ends first, the error matches context.Canceled: the mover stopped, not
// the move.
func (m *Mover) follow(parent context.Context, old *nomad.Allocation, deadline time.Time, res *Result) (*nomad.Allocation, error) {
	poll := m.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	ctx, cancel := context.WithDeadline(parent, deadline)
	defer cancel()
	for {
		if res.Bytes == 0 && m.Catalog != nil {
			for name := range old.TaskStates {
				if r, err := m.Catalog.Get(ctx, old.ID, name); err == nil && r.Bytes > 0 {
					res.Bytes += r.Bytes
				}
			}
		}
		if next, done, err := m.replacement(ctx, old.ID); done {
			return next, err
		}
		select {
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return nil, fmt.Errorf("stopped following the replacement of %s: %w", shortID(old.ID), err)
			}
			return nil, fmt.Errorf("replacement of %s not running by %s", shortID(old.ID), deadline.Format(time.TimeOnly))
		case <-time.After(poll):
		}
	}
}

// replacement looks at the allocation that replaces oldID: done is true
// once it runs (next is set) or has failed (err is set).
func (m *Mover) replacement(ctx context.Context, oldID string) (next *nomad.Allocation, done bool, err error) {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	old, _, err := m.Nomad.Allocations().Info(oldID, q)
	if err != nil || old.NextAllocation == "" {
		return nil, false, nil
	}
	a, _, err := m.Nomad.Allocations().Info(old.NextAllocation, q)
	if err != nil {
		return nil, false, nil
	}
	switch a.ClientStatus {
	case nomad.AllocClientStatusRunning, nomad.AllocClientStatusComplete:
		// A short task may have finished by the time it is seen.
		return a, true, nil
	case nomad.AllocClientStatusFailed, nomad.AllocClientStatusLost:
		return nil, true, fmt.Errorf("replacement allocation %s %s", shortID(a.ID), a.ClientStatus)
	}
	return nil, false, nil
}

// outcome reads from the replacement's task events, by the detail the
// driver gives them, whether it was restored, and why not.
func (m *Mover) outcome(a *nomad.Allocation, res *Result) {
	res.Reason = "no restore event"
	for _, ts := range a.TaskStates {
		for _, e := range ts.Events {
			switch catalog.State(e.Details[sdk.EventRestore]) {
			case catalog.StateRestored:
				res.Restored, res.Reason = true, ""
				return
			case catalog.StateColdStart, catalog.StateFailed:
				res.Reason = e.DisplayMessage
			}
		}
	}
}

func (m *Mover) record(ctx context.Context, rec *Record, result string) {
	if m.Records == nil {
		return
	}
	rec.Result = result
	if err := m.Records.Put(ctx, rec, nil); err != nil {
		m.Logger.Warn("record migration", "migration_id", rec.ID, "error", err)
	}
}

func (m *Mover) finish(ctx context.Context, rec *Record, res *Result, err error) {
	m.unsteer(rec)
	rec.FinishedAt = time.Now()
	rec.NewAllocID, rec.Downtime, rec.Bytes = res.NewAlloc, res.Downtime, res.Bytes
	result := ResultRestored
	switch {
	case errors.Is(err, context.Canceled):
		result, rec.Reason = ResultAbandoned, err.Error()
	case err != nil:
		result, rec.Reason = ResultFailed, err.Error()
	case !res.Restored:
		result, rec.Reason = ResultColdStart, res.Reason
	}
	if res.Destination != "" {
		rec.TargetNode = res.Destination
	}
	if res.destinationID != "" {
		rec.TargetNodeID = res.destinationID
	}
	m.recordFinal(context.WithoutCancel(ctx), rec, result)
}

// recordFinal writes a move's last record, trying a few times: a move
// whose final record is lost looks in progress until it is taken for
// abandoned.
func (m *Mover) recordFinal(ctx context.Context, rec *Record, result string) {
	if m.Records == nil {
		return
	}
	rec.Result = result
	ctx, cancel := context.WithTimeout(ctx, finalRecordTimeout)
	defer cancel()
	wait := 500 * time.Millisecond
	for {
		err := m.Records.Put(ctx, rec, nil)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			m.Logger.Error("the outcome of a move could not be recorded", "migration_id", rec.ID, "alloc_id", rec.AllocID, "result", result, "error", err)
			return
		case <-time.After(wait):
			wait = min(2*wait, 5*time.Second)
		}
	}
}

// finalRecordTimeout bounds the attempts to write a move's last record.
const finalRecordTimeout = 30 * time.Second

// nodeCallTimeout bounds each Nomad call that steers nodes.
const nodeCallTimeout = 30 * time.Second

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
