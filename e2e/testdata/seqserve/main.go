// Command seqserve serves a sequence on TCP port 8080: every connection
// gets the lines "seq 0", "seq 1", ... one every 10 ms, so that a reader
// can tell a lost or repeated line, and how long the stream stopped. It
// also prints "count N t=UNIXNANO" every 10 ms on stdout, as memtick does,
// for its downtime without a reader.
//
// CRIU cannot checkpoint MPTCP sockets, which Go's listeners open by
// default: plain TCP here.
//
//go:debug multipathtcp=0
package main

import (
	"bufio"
	"fmt"
	"log"
	"net"
	"time"
)

func main() {
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving on %s", ln.Addr())
	go tick()
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	w := bufio.NewWriter(c)
	for i := uint64(0); ; i++ {
		if _, err := fmt.Fprintf(w, "seq %d\n", i); err != nil {
			return
		}
		if err := w.Flush(); err != nil {
			log.Printf("connection from %s: %v", c.RemoteAddr(), err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tick prints the time every 10 ms.
func tick() {
	for n := 1; ; n++ {
		fmt.Printf("count %d t=%d\n", n, time.Now().UnixNano())
		time.Sleep(10 * time.Millisecond)
	}
}
