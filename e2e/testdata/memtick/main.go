// Command memtick holds MiB of random memory and ticks: the task the live
// migration tests and benchmark move.
//
//	memtick [-mib 256] [-every 100ms]
//
// It fills -mib MiB with random bytes, prints "ready mib=N sum=X", then every
// -every prints "count N t=UNIXNANO", N counting up from 1. Downtime is read
// from these lines: the last tick before a move and the first after it. When
// two ticks lie more than three intervals apart (the process was frozen, e.g.
// checkpointed and restored), it checks its memory against the sum taken at
// the start and prints "verify ok sum=X" or "verify BAD sum=X want=Y". The
// check runs beside the ticks, one at a time: the ticks measure how long
// the process could not run, not how long reading all its memory takes
// (after a lazy restore, that read brings every page that has not arrived).
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"time"
)

func main() {
	mib := flag.Int("mib", 256, "MiB of random memory to hold")
	every := flag.Duration("every", 100*time.Millisecond, "tick interval")
	flag.Parse()

	words := make([]uint64, *mib<<20/8)
	rng := rand.NewPCG(uint64(time.Now().UnixNano()), 0x9e3779b97f4a7c15)
	for i := range words {
		words[i] = rng.Uint64()
	}
	want := sum(words)
	fmt.Printf("ready mib=%d sum=%x\n", *mib, want)

	verifying := make(chan struct{}, 1)
	verify := func() {
		defer func() { <-verifying }()
		if got := sum(words); got == want {
			os.Stdout.WriteString(fmt.Sprintf("verify ok sum=%x\n", got))
		} else {
			os.Stdout.WriteString(fmt.Sprintf("verify BAD sum=%x want=%x\n", got, want))
		}
	}
	last := time.Now()
	for n := 1; ; n++ {
		now := time.Now()
		if now.Sub(last) > 3**every {
			select {
			case verifying <- struct{}{}:
				go verify()
			default: // a check is under way
			}
		}
		last = now
		// One write per line, so that a line is never split.
		os.Stdout.WriteString(fmt.Sprintf("count %d t=%d\n", n, now.UnixNano()))
		time.Sleep(*every - time.Since(now)%*every)
	}
}

// sum mixes every word of the memory into one value.
func sum(words []uint64) uint64 {
	var s uint64
	for i, w := range words {
		s = s*0x100000001b3 ^ w ^ uint64(i)
	}
	return s
}
