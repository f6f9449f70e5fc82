// Command nomad-driver-ferry is the Ferry task driver for Nomad. Nomad starts
// it from the client's plugin_dir; the driver re-executes the same binary as
// "nomad-driver-ferry shim DIR" to run one shim process per task. Installed
// in the client's cni_path under the name "ferry", it is the Ferry CNI
// plugin (driver/cni).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferry-nomad/ferry/driver/cni"
	"github.com/ferry-nomad/ferry/driver/plugin"
	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins"
)

func main() {
	if filepath.Base(os.Args[0]) == cni.Name {
		cni.Main(plugin.Version)
		return
	}
	shim.RunIfShim()
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "version", "--version":
			fmt.Println("nomad-driver-ferry", plugin.Version)
			return
		}
	}
	plugins.Serve(func(logger hclog.Logger) interface{} { return plugin.New(logger) })
}
