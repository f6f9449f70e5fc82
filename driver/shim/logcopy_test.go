package shim

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// A destination without a reader must not block the source; the oldest
// output is dropped beyond the buffer bound and the rest is delivered once
// a reader comes.
func TestLogCopierDropsOldestWithoutReader(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "out.fifo")
	must.NoError(t, unix.Mkfifo(fifo, 0o600))
	r, w, err := os.Pipe()
	must.NoError(t, err)

	c := newLogCopier("stdout", r, fifo, hclog.NewNullLogger())
	c.start()
	defer c.close()

	// Far more than a pipe and the buffer hold, all written without a
	// reader on the FIFO.
	total := 4 * logBufferSize
	data := make([]byte, total)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	written := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		_ = w.Close()
		written <- err
	}()
	select {
	case err := <-written:
		must.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("writing to the container pipe blocked")
	}

	f, err := os.Open(fifo)
	must.NoError(t, err)
	defer f.Close()
	got, err := io.ReadAll(f)
	must.NoError(t, err)
	must.LessEq(t, logBufferSize, len(got))
	must.Positive(t, len(got))
	must.True(t, bytes.HasSuffix(data, got), must.Sprint("delivered output is not the newest output"))

	select {
	case <-c.done():
	case <-time.After(5 * time.Second):
		t.Fatal("copier did not finish after EOF")
	}
}

// Without a destination path the output is read and discarded.
func TestLogCopierNoPath(t *testing.T) {
	r, w, err := os.Pipe()
	must.NoError(t, err)
	c := newLogCopier("stderr", r, "", hclog.NewNullLogger())
	c.start()
	defer c.close()
	_, err = w.Write(make([]byte, 1<<20))
	must.NoError(t, err)
	must.NoError(t, w.Close())
	select {
	case <-c.done():
	case <-time.After(5 * time.Second):
		t.Fatal("copier did not finish")
	}
}
