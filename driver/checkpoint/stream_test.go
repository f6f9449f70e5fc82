package checkpoint

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// recordingSink keeps what it is sent, checking that each file arrives in
// order.
type recordingSink struct {
	mu    sync.Mutex
	files map[string][]byte
	// failAfter makes Write fail once this many bytes were taken; 0 never.
	failAfter int
	taken     int
	// during counts the bytes taken while dumping is set.
	dumping bool
	during  int
}

func (s *recordingSink) Write(path string, off int64, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failAfter > 0 && s.taken+len(p) > s.failAfter {
		return errors.New("destination went away")
	}
	if int64(len(s.files[path])) != off {
		return fmt.Errorf("%s: write at %d after %d bytes", path, off, len(s.files[path]))
	}
	s.files[path] = append(s.files[path][:len(s.files[path]):len(s.files[path])], p...)
	if s.files[path] == nil {
		s.files[path] = []byte{}
	}
	s.taken += len(p)
	if s.dumping {
		s.during += len(p)
	}
	return nil
}

func (s *recordingSink) setDumping(v bool) {
	s.mu.Lock()
	s.dumping = v
	s.mu.Unlock()
}

// appendSlowly appends n chunks of size bytes to path, pausing between
// them, as CRIU writes memory pages; it returns everything written.
func appendSlowly(t *testing.T, path string, n, size int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	must.NoError(t, err)
	defer f.Close()
	var all []byte
	for i := 0; i < n; i++ {
		chunk := make([]byte, size)
		_, _ = rand.Read(chunk)
		_, err := f.Write(chunk)
		must.NoError(t, err)
		all = append(all, chunk...)
		time.Sleep(3 * followPoll)
	}
	return all
}

// While the dump runs, the page files are read as they grow and handed to
// the sink; the other images only at the end. Every byte is read once.
func TestFollowerStreamsPagesWhileDumping(t *testing.T) {
	dir := t.TempDir()
	must.NoError(t, os.Mkdir(filepath.Join(dir, ImagesName), 0o700))
	sink := &recordingSink{files: map[string][]byte{}}
	fw := newFollower(dir, sink, hclog.NewNullLogger())
	defer fw.close()

	sink.setDumping(true)
	done := make(chan struct{})
	following := make(chan struct{})
	go func() {
		defer close(following)
		fw.follow(done)
	}()
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "core-1.img"), []byte("core"), 0o644))
	pages := appendSlowly(t, filepath.Join(dir, "images", "pages-1.img"), 8, 64<<10)
	close(done)
	<-following
	sink.setDumping(false)
	// Most of the pages went while "dumping"; the core image did not.
	must.Greater(t, len(pages)/2, sink.during)
	must.MapNotContainsKey(t, sink.files, "images/core-1.img")

	must.NoError(t, os.WriteFile(filepath.Join(dir, RootfsName), []byte("tar"), 0o644))
	files, err := fw.finish(context.Background())
	must.NoError(t, err)
	must.Len(t, 3, files)
	must.Eq(t, pages, sink.files["images/pages-1.img"])
	must.Eq(t, []byte("core"), sink.files["images/core-1.img"])
	must.Eq(t, []byte("tar"), sink.files[RootfsName])
	for _, f := range files {
		size, h, err := hashFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		must.NoError(t, err)
		must.NoError(t, f.Check(size, h))
	}
	must.Nil(t, fw.sinkErr)
}

// A sink that fails is dropped; the files are still read and hashed whole.
func TestFollowerDropsFailingSink(t *testing.T) {
	dir := t.TempDir()
	must.NoError(t, os.Mkdir(filepath.Join(dir, ImagesName), 0o700))
	data := bytes.Repeat([]byte("p"), 3*readBuffer+5)
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "pages-1.img"), data, 0o644))
	sink := &recordingSink{files: map[string][]byte{}, failAfter: readBuffer}
	fw := newFollower(dir, sink, hclog.NewNullLogger())
	defer fw.close()
	files, err := fw.finish(context.Background())
	must.NoError(t, err)
	must.ErrorContains(t, fw.sinkErr, "destination went away")
	must.Len(t, 1, files)
	must.Eq(t, int64(len(data)), files[0].Size)
	size, h, err := hashFile(filepath.Join(dir, "images", "pages-1.img"))
	must.NoError(t, err)
	must.NoError(t, files[0].Check(size, h))
}

func TestStreamedWhileDumping(t *testing.T) {
	must.True(t, streamedWhileDumping("images/pages-1.img"))
	must.True(t, streamedWhileDumping("images/pages-12.img"))
	must.False(t, streamedWhileDumping("images/pagemap-1.img"))
	must.False(t, streamedWhileDumping("images/core-1.img"))
	must.False(t, streamedWhileDumping("pages-1.img"))
	must.False(t, streamedWhileDumping(RootfsName))
}
