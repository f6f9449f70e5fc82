// Package plugin is the Nomad task driver "ferry": its identity and
// capabilities live here, each schema beside the struct it fills
// (config.go, task_config.go), the task lifecycle in driver.go, and each other
// concern (fingerprint, images, exec, stats, recovery) in a file of its own.
package plugin

import (
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/fsisolation"
)

// taskHandleVersion is the version of task.State stored in Nomad's handle.
const taskHandleVersion = 1

// Version is the driver's version, set at build time with -ldflags.
var Version = "0.1.0-dev"

func pluginInfo() *base.PluginInfoResponse {
	return &base.PluginInfoResponse{
		Type:              base.PluginTypeDriver,
		PluginApiVersions: []string{drivers.ApiVersion010},
		PluginVersion:     Version,
		Name:              sdk.DriverName,
	}
}

var capabilities = &drivers.Capabilities{
	SendSignals: true,
	Exec:        true,
	FSIsolation: fsisolation.Image,
	NetIsolationModes: []drivers.NetIsolationMode{
		drivers.NetIsolationModeHost,
		drivers.NetIsolationModeGroup,
	},
	MountConfigs: drivers.MountConfigSupportAll,
}
