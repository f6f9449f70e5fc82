package plugin

import (
	"testing"

	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/shoenig/test/must"
)

// What a job may ask of a node: closed by default, each refusal naming the
// option that opens it, and allowed once the operator opens it.
func TestPermissions(t *testing.T) {
	var closed Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, "config {}", &closed)
	must.NoError(t, closed.validate())
	must.False(t, closed.Volumes.Enabled)
	must.SliceContains(t, closed.AllowCaps, "net_bind_service")
	must.SliceNotContains(t, closed.AllowCaps, "sys_admin")

	var open Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, `config {
  volumes {
    enabled = true
  }
  allow_caps      = ["all"]
  oci_layout_dirs = ["/srv/layouts"]
}`, &open)
	must.NoError(t, open.validate())

	cases := []struct {
		name string
		tc   TaskConfig
		want string // the refusal by default
	}{
		{"bind of /", TaskConfig{Mount: []MountConfig{{Type: "bind", Source: "/", Target: "/host", Options: []string{"rshared"}}}},
			`mount[0]: binding / of this node is not allowed: the operator may set volumes { enabled = true }`},
		{"volume", TaskConfig{Volumes: []string{"/etc:/host-etc"}}, `volumes: binding /etc of this node is not allowed`},
		{"all capabilities", TaskConfig{CapAdd: []string{"ALL"}}, `cap_add: ALL not allowed on this node: the operator may add them to the plugin's allow_caps`},
		{"one capability", TaskConfig{CapAdd: []string{"SYS_ADMIN", "chown"}}, `cap_add: SYS_ADMIN not allowed`},
		{"layout", TaskConfig{Image: "oci:/srv/layouts/app:1"}, `is a directory of this node, which the plugin does not allow: the operator may list it, or a directory above it, in the plugin's oci_layout_dirs`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.tc.Image == "" {
				c.tc.Image = "registry.example/app:1"
			}
			c.tc.PullTimeout = "1m"
			_, err := closed.validateTask(c.tc, &drivers.TaskConfig{}, "linux/amd64")
			must.ErrorContains(t, err, c.want)
			_, err = open.validateTask(c.tc, &drivers.TaskConfig{}, "linux/amd64")
			must.NoError(t, err)
		})
	}
	// A tmpfs mount and the default capabilities need nothing opened; a
	// layout outside the listed directories stays refused.
	_, err := closed.validateTask(TaskConfig{Image: "registry.example/app:1", PullTimeout: "1m", CapAdd: []string{"NET_BIND_SERVICE"},
		Mount: []MountConfig{{Type: "tmpfs", Target: "/scratch"}}}, &drivers.TaskConfig{}, "linux/amd64")
	must.NoError(t, err)
	_, err = open.validateTask(TaskConfig{Image: "oci:/srv/layouts-other/app", PullTimeout: "1m"}, &drivers.TaskConfig{}, "linux/amd64")
	must.ErrorContains(t, err, "oci_layout_dirs")
}
