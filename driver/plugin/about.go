// Package plugin is the Nomad task driver "ferry": its schemas and
// capabilities live here, the task lifecycle in driver.go, and each other
// concern (fingerprint, images, exec, stats, recovery) in a file of its own.
package plugin

import (
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/fsisolation"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
)

const (
	// Name is the driver name jobspecs use in `driver = "ferry"`.
	Name = "ferry"

	// taskHandleVersion is the version of task.State stored in Nomad's handle.
	taskHandleVersion = 1
)

// Version is the driver's version, set at build time with -ldflags.
var Version = "0.1.0-dev"

func pluginInfo() *base.PluginInfoResponse {
	return &base.PluginInfoResponse{
		Type:              base.PluginTypeDriver,
		PluginApiVersions: []string{drivers.ApiVersion010},
		PluginVersion:     Version,
		Name:              Name,
	}
}

// configSpec is the schema of the client's `plugin "nomad-driver-ferry"` block.
var configSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"runc_path":           hclspec.NewDefault(hclspec.NewAttr("runc_path", "string", false), hclspec.NewLiteral(`"runc"`)),
	"criu_path":           hclspec.NewDefault(hclspec.NewAttr("criu_path", "string", false), hclspec.NewLiteral(`"criu"`)),
	"data_dir":            hclspec.NewDefault(hclspec.NewAttr("data_dir", "string", false), hclspec.NewLiteral(`"/var/lib/ferry"`)),
	"state_dir":           hclspec.NewDefault(hclspec.NewAttr("state_dir", "string", false), hclspec.NewLiteral(`"/run/ferry"`)),
	"platform":            hclspec.NewAttr("platform", "string", false),
	"insecure_registries": hclspec.NewAttr("insecure_registries", "list(string)", false),
	"auth": hclspec.NewBlock("auth", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"config": hclspec.NewAttr("config", "string", false),
	})),
	"gc": hclspec.NewDefault(hclspec.NewBlock("gc", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"image":       hclspec.NewDefault(hclspec.NewAttr("image", "bool", false), hclspec.NewLiteral("true")),
		"image_delay": hclspec.NewDefault(hclspec.NewAttr("image_delay", "string", false), hclspec.NewLiteral(`"3m"`)),
		"dangling_containers": hclspec.NewDefault(hclspec.NewBlock("dangling_containers", false, danglingContainersSpec),
			hclspec.NewLiteral(danglingContainersDefault)),
	})), hclspec.NewLiteral(`{ image = true, image_delay = "3m", dangling_containers = `+danglingContainersDefault+` }`)),
	"nomad": hclspec.NewBlock("nomad", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"address": hclspec.NewAttr("address", "string", false),
		"token":   hclspec.NewAttr("token", "string", false),
	})),
	"consul": hclspec.NewBlock("consul", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"address": hclspec.NewAttr("address", "string", false),
		"token":   hclspec.NewAttr("token", "string", false),
	})),
	"checkpoint_dir": hclspec.NewAttr("checkpoint_dir", "string", false),
	"transfer": hclspec.NewDefault(hclspec.NewBlock("transfer", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"listen":      hclspec.NewDefault(hclspec.NewAttr("listen", "string", false), hclspec.NewLiteral(`"`+defaultTransferListen+`"`)),
		"advertise":   hclspec.NewAttr("advertise", "string", false),
		"ca_file":     hclspec.NewAttr("ca_file", "string", false),
		"cert_file":   hclspec.NewAttr("cert_file", "string", false),
		"key_file":    hclspec.NewAttr("key_file", "string", false),
		"server_name": hclspec.NewAttr("server_name", "string", false),
	})), hclspec.NewLiteral(`{ listen = "`+defaultTransferListen+`" }`)),
})

// danglingContainersSpec is the `gc { dangling_containers { ... } }` block.
var danglingContainersSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"enabled":        hclspec.NewDefault(hclspec.NewAttr("enabled", "bool", false), hclspec.NewLiteral("true")),
	"period":         hclspec.NewDefault(hclspec.NewAttr("period", "string", false), hclspec.NewLiteral(`"5m"`)),
	"creation_grace": hclspec.NewDefault(hclspec.NewAttr("creation_grace", "string", false), hclspec.NewLiteral(`"5m"`)),
	"dry_run":        hclspec.NewDefault(hclspec.NewAttr("dry_run", "bool", false), hclspec.NewLiteral("false")),
})

const danglingContainersDefault = `{ enabled = true, period = "5m", creation_grace = "5m", dry_run = false }`

// mountSpec is one `mount { ... }` block of a task.
var mountSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"type":     hclspec.NewDefault(hclspec.NewAttr("type", "string", false), hclspec.NewLiteral(`"bind"`)),
	"source":   hclspec.NewAttr("source", "string", false),
	"target":   hclspec.NewAttr("target", "string", true),
	"readonly": hclspec.NewAttr("readonly", "bool", false),
	"options":  hclspec.NewAttr("options", "list(string)", false),
})

// taskConfigSpec is the schema of a task's `config { ... }` block.
var taskConfigSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"image":        hclspec.NewAttr("image", "string", true),
	"force_pull":   hclspec.NewAttr("force_pull", "bool", false),
	"pull_timeout": hclspec.NewDefault(hclspec.NewAttr("pull_timeout", "string", false), hclspec.NewLiteral(`"5m"`)),
	"auth": hclspec.NewBlock("auth", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"username": hclspec.NewAttr("username", "string", false),
		"password": hclspec.NewAttr("password", "string", false),
	})),
	"entrypoint":      hclspec.NewAttr("entrypoint", "list(string)", false),
	"command":         hclspec.NewAttr("command", "string", false),
	"args":            hclspec.NewAttr("args", "list(string)", false),
	"work_dir":        hclspec.NewAttr("work_dir", "string", false),
	"user":            hclspec.NewAttr("user", "string", false),
	"hostname":        hclspec.NewAttr("hostname", "string", false),
	"readonly_rootfs": hclspec.NewAttr("readonly_rootfs", "bool", false),
	"cap_add":         hclspec.NewAttr("cap_add", "list(string)", false),
	"cap_drop":        hclspec.NewAttr("cap_drop", "list(string)", false),
	"mount":           hclspec.NewBlockList("mount", mountSpec),
	"mounts":          hclspec.NewBlockList("mounts", mountSpec),
	"volumes":         hclspec.NewAttr("volumes", "list(string)", false),
	"ports":           hclspec.NewAttr("ports", "list(string)", false),
	"checkpoint": hclspec.NewBlock("checkpoint", false, hclspec.NewObject(map[string]*hclspec.Spec{
		"enabled":            hclspec.NewAttr("enabled", "bool", false),
		"tcp_established":    hclspec.NewAttr("tcp_established", "bool", false),
		"file_locks":         hclspec.NewAttr("file_locks", "bool", false),
		"on_restore_failure": hclspec.NewDefault(hclspec.NewAttr("on_restore_failure", "string", false), hclspec.NewLiteral(`"cold_start"`)),
		"restore_wait":       hclspec.NewDefault(hclspec.NewAttr("restore_wait", "string", false), hclspec.NewLiteral(`"2m"`)),
	})),
})

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
