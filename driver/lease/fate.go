package lease

import (
	"context"
	"errors"
	"net/http"

	nomad "github.com/hashicorp/nomad/api"
)

// FateOf tells what became of an allocation of namespace, as Nomad says:
// Gone once it is stopped for good, or unknown to Nomad (collected).
func FateOf(ctx context.Context, c *nomad.Client, namespace, allocID string) (Fate, error) {
	a, _, err := c.Allocations().Info(allocID, (&nomad.QueryOptions{Namespace: namespace}).WithContext(ctx))
	switch {
	case NotFound(err):
		return Gone, nil
	case err != nil:
		return Live, err
	case a.DesiredTransition.ShouldMigrate():
		return Migrating, nil
	case a.ClientTerminalStatus() || a.ServerTerminalStatus():
		return Gone, nil
	}
	return Live, nil
}

// NotFound reports whether err is Nomad's answer that what was asked for
// does not exist.
func NotFound(err error) bool {
	var ue nomad.UnexpectedResponseError
	return errors.As(err, &ue) && ue.StatusCode() == http.StatusNotFound
}
