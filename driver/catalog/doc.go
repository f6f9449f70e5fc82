// Package catalog is the checkpoint catalogue: one record per task of an
// allocation in Consul KV, through which the node that checkpoints a task
// and the node that restores it coordinate.
//
// The source node writes the record of each task under the source
// allocation's ID (<prefix><alloc ID>/<task>, sdk.PrefixCheckpoints by default); the
// replacement allocation finds it through Nomad's PreviousAllocation. The
// state moves
//
//	checkpointing -> ready -> restoring -> restored
//
// (a lazy move passes through restoring_lazy before restored, while the
// memory follows the restored task: its record's lazy names the source's
// page server and the pages left), with failed and cold_start as the
// other ends. Transition changes a record
// with a check-and-set on Consul's modify index, so that of two nodes racing
// to claim a ready checkpoint exactly one wins; WaitState follows a record
// with blocking queries.
//
// A task with periodic checkpoints has a record of its own
// (<sdk.PrefixPeriodic><alloc ID>/<task>, Periodic): the node that runs it
// adds each checkpoint with its copies off the node; the replacement of an
// allocation lost with its node resumes the newest one copied.
//
// Each driver also records where its transfer server listens (Endpoint,
// under sdk.PrefixDrivers), held by a Consul session; the session helpers
// serve the companion's own session-bound records too.
package catalog
