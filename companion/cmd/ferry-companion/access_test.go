package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
)

func TestDenied(t *testing.T) {
	refused := fmt.Errorf("read ferry/nodes/n1: %w", consul.StatusError{Code: 403, Body: "Permission denied: token lacks permission 'key:read'"})
	err := denied(refused, tokenSetting("consul"), consulPolicy, "read the ferry/ keys", `key_prefix "ferry/" { policy = "write" }`)
	must.ErrorIs(t, err, refused)
	for _, want := range []string{
		"consul.token (-consul-token, CONSUL_HTTP_TOKEN) or consul.token_file (-consul-token-file, CONSUL_HTTP_TOKEN_FILE)",
		`needs key_prefix "ferry/" { policy = "write" }`, consulPolicy, "lacks permission 'key:read'",
	} {
		must.StrContains(t, err.Error(), want)
	}
	// A denial is explained once; other errors are left as they are.
	must.Eq(t, err.Error(), explainDenied(err).Error())
	other := errors.New("connection refused")
	must.Eq(t, other, denied(other, "", "", "", ""))
	must.Eq(t, other, explainDenied(other))

	unknown := consul.StatusError{Code: 403, Body: "ACL not found"}
	must.StrContains(t, denied(unknown, tokenSetting("consul"), consulPolicy, "read the ferry/ keys", "").Error(), "refused to read the ferry/ keys as unknown")

	later := fmt.Errorf("stop allocation: %w", consul.StatusError{Code: 403, Body: "Permission denied"})
	explained := explainDenied(later).Error()
	must.True(t, strings.HasPrefix(explained, later.Error()))
	must.StrContains(t, explained, "nomad.token (-nomad-token, NOMAD_TOKEN) or nomad.token_file (-nomad-token-file), needs "+nomadPolicy)
}
