// Command nomad-driver-ferry is the Ferry task driver for Nomad. Nomad starts
// it from the client's plugin_dir; the driver re-executes the same binary
// with the "shim" argument to run one shim process per task.
package main

func main() {}
