package migrate

import (
	"context"
	"fmt"
	"time"

	nomad "github.com/hashicorp/nomad/api"
)

// SetNodeMeta sets node's dynamic metadata key to value (removes it when
// value is nil) and waits until the servers show the change: the client
// passes its metadata on a little later, and a placement or a reading
// before that would not see it.
func SetNodeMeta(ctx context.Context, client *nomad.Client, node, key string, value *string) error {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	if _, err := client.Nodes().Meta().Apply(&nomad.NodeMetaApplyRequest{NodeID: node, Meta: map[string]*string{key: value}}, q); err != nil {
		return fmt.Errorf("set meta.%s: %w", key, err)
	}
	want := ""
	if value != nil {
		want = *value
	}
	for {
		n, _, err := client.Nodes().Info(node, q)
		if err == nil && n.Meta[key] == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the servers do not show meta.%s yet: %w", key, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
