// Command archprint says which architecture it was built for, then counts.
// The e2e tests build it for amd64 and arm64 into one multi-platform image.
package main

import (
	"fmt"
	"runtime"
	"time"
)

func main() {
	fmt.Println("arch", runtime.GOARCH)
	for i := 1; ; i++ {
		fmt.Println("count", i)
		time.Sleep(100 * time.Millisecond)
	}
}
