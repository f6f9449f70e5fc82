// Command ferry-companion is Ferry's node agent and rebalancer, run on every
// Nomad client as a system job.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("ferry-companion", version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: ferry-companion version")
	os.Exit(2)
}
