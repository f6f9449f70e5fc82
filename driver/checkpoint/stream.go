package checkpoint

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Sink receives a checkpoint's files while Create writes them, for example
// to stream them to the node that will restore the task while CRIU is still
// dumping it. For each file, Write is called with the file's bytes in
// order, the first call at offset 0; calls for different files interleave.
// The manifest is not sent through Write: Create returns it, and the caller
// sends it when it chooses (see Sink in package transfer).
//
// A Sink that fails is dropped: the checkpoint is still completed on disk,
// and Create reports the failure in Result.SinkErr.
type Sink interface {
	Write(path string, off int64, p []byte) error
}

const (
	// followPoll is how often the follower looks for new bytes while CRIU
	// dumps.
	followPoll = 5 * time.Millisecond
	// readBuffer is the size of one read (and one Sink.Write).
	readBuffer = 1 << 20
)

// streamedWhileDumping reports whether the file rel of a checkpoint being
// dumped may be read before the dump ends: CRIU's memory pages, which it
// only ever appends to, and which are nearly all of a checkpoint's bytes.
// Other images are read once the dump is over.
func streamedWhileDumping(rel string) bool {
	name := strings.TrimPrefix(rel, ImagesName+"/")
	return name != rel && strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// follower reads the files of a checkpoint directory as they grow, once
// each: it hashes them for the manifest and hands them to the sink.
type follower struct {
	dir    string
	sink   Sink
	logger hclog.Logger
	files  map[string]*followed
	buf    []byte
	// sinkErr is the sink's first error; the sink is dropped then.
	sinkErr error
}

type followed struct {
	f    *os.File
	off  int64
	hash hash.Hash
}

func newFollower(dir string, sink Sink, logger hclog.Logger) *follower {
	return &follower{dir: dir, sink: sink, logger: logger, files: make(map[string]*followed), buf: make([]byte, readBuffer)}
}

// follow reads CRIU's page files while the dump runs, until done is closed.
// Errors are left to finish, which reads every file to its end.
func (fw *follower) follow(done <-chan struct{}) {
	t := time.NewTicker(followPoll)
	defer t.Stop()
	images := filepath.Join(fw.dir, ImagesName)
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		entries, err := os.ReadDir(images)
		if err != nil {
			continue
		}
		for _, e := range entries {
			rel := ImagesName + "/" + e.Name()
			if e.Type().IsRegular() && streamedWhileDumping(rel) {
				if err := fw.catchUp(rel); err != nil {
					fw.logger.Debug("reading a page file during the dump", "path", rel, "error", err)
				}
			}
		}
	}
}

// catchUp reads file rel from where it was left to its current end.
func (fw *follower) catchUp(rel string) error {
	st := fw.files[rel]
	if st == nil {
		f, err := os.Open(filepath.Join(fw.dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		st = &followed{f: f, hash: NewFileHash()}
		fw.files[rel] = st
		// An empty first write announces the file, so that an empty one
		// reaches the sink too.
		fw.send(rel, 0, nil)
	}
	for {
		n, err := st.f.ReadAt(fw.buf, st.off)
		if n > 0 {
			st.hash.Write(fw.buf[:n])
			fw.send(rel, st.off, fw.buf[:n])
			st.off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// send hands bytes to the sink, dropping it when it fails.
func (fw *follower) send(rel string, off int64, p []byte) {
	if fw.sink == nil {
		return
	}
	if err := fw.sink.Write(rel, off, p); err != nil {
		fw.logger.Warn("streaming the checkpoint failed; completing it on disk", "path", rel, "error", err)
		fw.sink, fw.sinkErr = nil, err
	}
}

// finish reads every file of the finished checkpoint to its end, sets the
// modes of what it holds to 0700 (directories) and 0600 (files), and
// returns every regular file but the manifest with its size and sum,
// sorted by path. Anything else is an error: a checkpoint holds only files
// and directories.
func (fw *follower) finish(ctx context.Context) ([]File, error) {
	var files []File
	err := filepath.WalkDir(fw.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(fw.dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return os.Chmod(path, dirMode)
		case !d.Type().IsRegular():
			return fmt.Errorf("checkpoint file %s: not a regular file", rel)
		case rel == ManifestName:
			return nil
		}
		if err := os.Chmod(path, fileMode); err != nil {
			return err
		}
		if err := fw.catchUp(rel); err != nil {
			return fmt.Errorf("read %s: %w", rel, err)
		}
		st := fw.files[rel]
		files = append(files, File{Path: rel, Size: st.off, Sum: hex.EncodeToString(st.hash.Sum(nil)), Mode: uint32(fileMode)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list checkpoint files: %w", err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// close closes the files the follower opened; it may be called again.
func (fw *follower) close() {
	for rel, st := range fw.files {
		_ = st.f.Close()
		delete(fw.files, rel)
	}
}
