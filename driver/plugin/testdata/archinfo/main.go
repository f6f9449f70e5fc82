// Command archinfo says which architecture it was built for. The driver's
// tests build it for several architectures.
package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Println("arch", runtime.GOARCH)
}
