package plugin

import (
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/shoenig/test/must"
)

// The transfer and image limits are read from the plugin block, each bad
// value refused naming its field.
func TestLimitsConfig(t *testing.T) {
	var c Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {
  transfer {
    idle_timeout        = "1m"
    max_connections     = 8
    max_checkpoint_size = "64GiB"
    min_free_space      = "1GiB"
  }
  images {
    max_layer_size = "2GiB"
    min_free_space = "100MB"
  }
}`, &c)
	must.NoError(t, c.validate())
	must.Eq(t, transfer.Limits{IdleTimeout: 60e9, MaxConnections: 8, MaxCheckpointSize: 64 << 30, MinFreeSpace: 1 << 30}, c.Transfer.limits)
	must.Eq(t, 2<<30, c.Images.maxLayerSize)
	must.Eq(t, 100_000_000, c.Images.minFreeSpace)

	var defaults Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {}`, &defaults)
	must.NoError(t, defaults.validate())
	must.Eq(t, transfer.Limits{}, defaults.Transfer.limits)
	must.Eq(t, 0, defaults.Images.maxLayerSize)

	for _, tc := range []struct{ block, want string }{
		{`transfer { idle_timeout = "soon" }`, `transfer.idle_timeout: "soon" must be a positive duration`},
		{`transfer { idle_timeout = "-1s" }`, `transfer.idle_timeout: "-1s" must be a positive duration`},
		{`transfer { max_connections = -1 }`, `transfer.max_connections: -1 must be positive`},
		{`transfer { max_checkpoint_size = "lots" }`, `transfer.max_checkpoint_size: "lots" is not a size`},
		{`transfer { min_free_space = "0" }`, `transfer.min_free_space: "0" is not a size`},
		{`images { max_layer_size = "8 gigs" }`, `images.max_layer_size: "8 gigs" is not a size`},
		{`images { min_free_space = "-5MiB" }`, `images.min_free_space: "-5MiB" is not a size`},
	} {
		var bad Config
		hclutils.NewConfigParser(configSpec).ParseHCL(t, "config {\n"+tc.block+"\n}", &bad)
		must.ErrorContains(t, bad.validate(), tc.want)
	}
}

// gc.checkpoints sets the ages this node's checkpoint records carry and
// how long an orphaned checkpoint directory is kept; each bad value is
// refused naming its field.
func TestCheckpointsGCConfig(t *testing.T) {
	var c Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {
  gc {
    checkpoints {
      stale     = "30m"
      unclaimed = "2h"
      failed    = "48h"
      orphan    = "10m"
    }
  }
}`, &c)
	must.NoError(t, c.validate())
	must.Eq(t, catalog.ReapPolicy{Stale: 30 * time.Minute, Unclaimed: 2 * time.Hour, Retention: 48 * time.Hour}, c.GC.Checkpoints.reap.ReapPolicy)
	must.Eq(t, 10*time.Minute, c.GC.Checkpoints.reap.OrphanGrace)
	must.True(t, c.GC.Image, must.Sprint("the other gc options keep their defaults"))

	var defaults Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {}`, &defaults)
	must.NoError(t, defaults.validate())
	must.Eq(t, defaultCheckpointReap(), defaults.GC.Checkpoints.reap)

	for _, tc := range []struct{ block, want string }{
		{`gc { checkpoints { stale = "an hour" } }`, `gc.checkpoints.stale: "an hour" is not a duration`},
		{`gc { checkpoints { unclaimed = "0s" } }`, `gc.checkpoints.unclaimed: "0s" must be positive`},
		{`gc { checkpoints { failed = "-1h" } }`, `gc.checkpoints.failed: "-1h" must be positive`},
		{`gc { checkpoints { orphan = "x" } }`, `gc.checkpoints.orphan: "x" is not a duration`},
	} {
		var bad Config
		hclutils.NewConfigParser(configSpec).ParseHCL(t, "config {\n"+tc.block+"\n}", &bad)
		must.ErrorContains(t, bad.validate(), tc.want)
	}
}
