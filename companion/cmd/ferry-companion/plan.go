package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/catalog"
)

// printPlan writes one planning round as tables: each node's smoothed load
// and state, the moves the planner would make and why, and what it
// rejected and why.
func printPlan(w io.Writer, in *rebalance.Inputs, snap planner.Snapshot, plan planner.Plan) {
	names := map[string]string{}
	for _, n := range in.Nodes {
		names[n.ID] = n.Name
	}
	records := map[string]load.Record{}
	for _, r := range in.Records {
		records[r.NodeID] = r
	}
	reports := map[string]planner.NodeReport{}
	for _, n := range plan.Nodes {
		reports[n.NodeID] = n
	}
	allocJob := map[string]string{}
	for _, a := range snap.Allocs {
		allocJob[a.ID] = a.JobID + "/" + a.Group
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPLATFORM\tSTATE\tONLINE CPU\tONLINE MEM\tOFFLINE CPU\tOFFLINE MEM\tSTREAK\tSAMPLED")
	for _, n := range snap.Nodes {
		r := records[n.ID]
		state := "ok"
		switch rep, ok := reports[n.ID]; {
		case ok && rep.Hot:
			state = "hot"
		case !n.Ready:
			state = "not ready"
		case n.Draining:
			state = "draining"
		case !n.Eligible:
			state = "ineligible"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s ago\n", n.Name, orDash(n.Platform), state,
			pct(n.Online.CPU, n.Capacity.CPU), pct(n.Online.MemoryMB, n.Capacity.MemoryMB),
			pct(n.Offline.CPU, n.Capacity.CPU), pct(n.Offline.MemoryMB, n.Capacity.MemoryMB),
			reports[n.ID].Streak, rebalance.Age(in.Now, r.SampledAt))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nMoves (%d):\n", len(plan.Moves))
	if len(plan.Moves) > 0 {
		fmt.Fprintln(tw, "ALLOC\tJOB\tFROM\tTO\tKIND\tREASON")
		for _, d := range plan.Moves {
			m := d.Move
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", short(m.AllocID), allocJob[m.AllocID], names[m.From], names[m.To], m.Kind, d.Reason)
		}
		tw.Flush()
	}
	if len(snap.InFlight) > 0 {
		fmt.Fprintf(w, "\nIn flight (%d):\n", len(snap.InFlight))
		fmt.Fprintln(tw, "ALLOC\tJOB\tFROM\tTO\tKIND\tSTARTED")
		for _, m := range snap.InFlight {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\n", short(m.AllocID), m.JobID, names[m.From], names[m.To], orDash(string(m.Kind)), rebalance.Age(in.Now, m.Started))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nRejected (%d):\n", len(plan.Rejected))
	if len(plan.Rejected) > 0 {
		fmt.Fprintln(tw, "ALLOC\tJOB\tNODE\tREASON")
		for _, r := range plan.Rejected {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", orDash(short(r.AllocID)), orDash(allocJob[r.AllocID]), names[r.NodeID], r.Reason)
		}
		tw.Flush()
	}
}

// printStatus writes the rebalancer's status.
func printStatus(w io.Writer, st *rebalance.Status, now time.Time) {
	if st.Leader != nil {
		fmt.Fprintf(w, "Planner: %s (allocation %s, leading for %s)\n", st.Leader.NodeName, orDash(short(st.Leader.AllocID)), rebalance.Age(now, st.Leader.Since))
	} else {
		fmt.Fprintln(w, "Planner: none (no agent holds the lock)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "\nNodes (%d):\n", len(st.Nodes))
	fmt.Fprintln(tw, "NODE\tSOURCE\tONLINE CPU\tONLINE MEM\tOFFLINE CPU\tOFFLINE MEM\tALLOCS\tSAMPLED")
	for _, r := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s ago\n", r.NodeName, r.Source,
			pct(r.Online.CPU, r.Capacity.CPU), pct(r.Online.MemoryMB, r.Capacity.MemoryMB),
			pct(r.Offline.CPU, r.Capacity.CPU), pct(r.Offline.MemoryMB, r.Capacity.MemoryMB),
			len(r.Allocs), rebalance.Age(now, r.SampledAt))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nMoves in flight (%d):\n", len(st.InFlight))
	if len(st.InFlight) > 0 {
		fmt.Fprintln(tw, "ALLOC\tJOB\tFROM\tTO\tSTARTED")
		for _, m := range st.InFlight {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\n", short(m.AllocID), m.JobID, m.SourceNode, orDash(m.TargetNode), rebalance.Age(now, m.StartedAt))
		}
		tw.Flush()
	}
	if st.Capacity != nil {
		how := ""
		if st.Capacity.DryRun {
			how = ", dry run: nothing done"
		}
		fmt.Fprintf(w, "\nCapacity (last round %s ago by %s%s):", rebalance.Age(now, st.Capacity.At), orDash(st.Capacity.By), how)
		printPools(w, sortedPools(st.Capacity.Pools))
	}
	if st.Checkpoints != nil {
		printCheckpoints(w, st.Checkpoints)
	}
	fmt.Fprintf(w, "\nLast moves (%d):\n", len(st.Last))
	if len(st.Last) > 0 {
		fmt.Fprintln(tw, "ALLOC\tJOB\tFROM\tTO\tRESULT\tDOWNTIME\tFINISHED\tREASON")
		for _, m := range st.Last {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", short(m.AllocID), m.JobID, m.SourceNode, orDash(m.TargetNode), m.Result,
				m.Downtime.Round(10*time.Millisecond), rebalance.Age(now, m.FinishedAt), clip(m.Reason, 120))
		}
		tw.Flush()
	}
}

// printCheckpoints writes the checkpoint records by state, with those due
// for reaping, and what was reaped lately, e.g.
//
//	Checkpoints (4 records):
//	  3 ready (1 older than 24h: reaped at next pass)
//	  1 failed (kept 7d for the operator)
//	Reaped in the last 24h: 2 (1 checkpointing, 1 ready)
func printCheckpoints(w io.Writer, c *rebalance.CheckpointStatus) {
	fmt.Fprintf(w, "\nCheckpoints (%d records):\n", c.Total)
	for _, s := range c.States {
		if s.Count == 0 {
			continue
		}
		line := fmt.Sprintf("  %d %s", s.Count, s.State)
		switch {
		case s.Due > 0 && s.Age == 0:
			line += fmt.Sprintf(" (%d to remove: reaped at next pass)", s.Due)
		case s.Due > 0:
			line += fmt.Sprintf(" (%d older than %s: reaped at next pass)", s.Due, humanAge(s.Age))
		case s.State == catalog.StateFailed:
			line += fmt.Sprintf(" (kept %s for the operator)", humanAge(s.Age))
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintf(w, "Reaped in the last %s: %d", humanAge(c.Window), c.ReapedTotal)
	if c.ReapedTotal > 0 {
		var parts []string
		for _, s := range slices.Sorted(maps.Keys(c.Reaped)) {
			parts = append(parts, fmt.Sprintf("%d %s", c.Reaped[s], s))
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
}

// humanAge writes d in whole days, hours or minutes when it is one.
func humanAge(d time.Duration) string {
	switch {
	case d >= 48*time.Hour && d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// printPools writes the pools' sizing: the algorithm's figures, what the
// round does and why, and the nodes waiting to leave service.
func printPools(w io.Writer, pools []capacity.PoolPlan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "\nPools (%d):\n", len(pools))
	fmt.Fprintln(tw, "POOL\tTARGET\tNEEDED\tIN SERVICE\tSTARTING\tSTOPPING\tPARKED\tQUOTA\tROUND")
	for _, pp := range pools {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", pp.Pool, pp.Target, pp.VT, pp.VA, pp.VB, pp.VD, pp.Parked, pp.Quota, pp.Why)
	}
	tw.Flush()
	for _, pp := range pools {
		if len(pp.Actions)+len(pp.Waiting) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nPool %s:\n", pp.Pool)
		fmt.Fprintln(tw, "ACTION\tNODE\tALLOC\tREASON")
		for _, a := range pp.Actions {
			what := string(a.Kind)
			if a.Count > 0 {
				what += fmt.Sprintf(" %d", a.Count)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", what, orDash(a.NodeName), orDash(short(a.AllocID)), a.Reason)
		}
		for _, a := range pp.Waiting {
			fmt.Fprintf(tw, "waiting\t%s\t-\t%s\n", a.NodeName, a.Reason)
		}
		tw.Flush()
	}
}

// sortedPools are a saved sizing's pools by name.
func sortedPools(pools map[string]capacity.PoolPlan) []capacity.PoolPlan {
	out := make([]capacity.PoolPlan, 0, len(pools))
	for _, name := range slices.Sorted(maps.Keys(pools)) {
		out = append(out, pools[name])
	}
	return out
}

func pct(used, capacity float64) string {
	if capacity <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*used/capacity)
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clip shortens s to at most n runes for a table cell.
func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
