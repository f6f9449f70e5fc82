package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ferry-nomad/ferry/driver/catalog"
	consul "github.com/hashicorp/consul/api"
)

// Fence makes a write conditional on a Consul lock still being held: the
// write happens only while Session holds Key. A planner that lost its lock
// can then no longer record (and so start) anything.
type Fence struct {
	Key, Session string
}

// ErrFenced: a fenced write found the lock no longer held by its session.
var ErrFenced = errors.New("lock no longer held")

// WriteFenced sets key to value in one transaction that first checks that
// fence's session holds its lock (no check when fence is nil). When it does
// not, nothing is written and the error matches ErrFenced; any other
// rolled-back transaction (e.g. an ACL denial) says why.
func WriteFenced(ctx context.Context, client *consul.Client, fence *Fence, key string, value []byte) error {
	var ops consul.TxnOps
	if fence != nil {
		ops = append(ops, &consul.TxnOp{KV: &consul.KVTxnOp{Verb: consul.KVCheckSession, Key: fence.Key, Session: fence.Session}})
	}
	ops = append(ops, &consul.TxnOp{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: key, Value: value}})
	ok, resp, _, err := client.Txn().Txn(ops, (&consul.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return err
	case ok:
		return nil
	case fence != nil && resp != nil && slices.ContainsFunc(resp.Errors, func(e *consul.TxnError) bool { return e.OpIndex == 0 }):
		return fmt.Errorf("%s not held by session %s: %w", fence.Key, fence.Session, ErrFenced)
	}
	return fmt.Errorf("transaction rolled back: %s", catalog.TxnReasons(resp))
}
