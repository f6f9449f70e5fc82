package transfer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
)

// Frame kinds of a push body (see the package documentation).
const (
	frameFile     = 'F'
	frameManifest = 'M'
	// maxFrame bounds the payload of one file frame.
	maxFrame = 4 << 20
	// frameHeader is the size of a header without its path.
	frameHeader = 1 + 2 + 8 + 4
)

// frame is one frame's header; the payload follows it on the stream.
type frame struct {
	kind   byte
	path   string
	offset int64
	length int64
}

// appendFrameHeader appends f's header to buf.
func appendFrameHeader(buf []byte, f frame) []byte {
	buf = append(buf, f.kind)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(f.path)))
	buf = append(buf, f.path...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(f.offset))
	return binary.BigEndian.AppendUint32(buf, uint32(f.length))
}

// readFrameHeader reads one header from r and checks it: a known kind, a
// path a manifest could list (for file frames), and a payload within the
// limits. io.EOF means the stream ended between frames.
func readFrameHeader(r io.Reader) (frame, error) {
	var head [3]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return frame{}, fmt.Errorf("stream cut inside a frame header: %w", err)
		}
		return frame{}, err
	}
	f := frame{kind: head[0]}
	path := make([]byte, binary.BigEndian.Uint16(head[1:]))
	var rest [12]byte
	if _, err := io.ReadFull(r, path); err != nil {
		return frame{}, fmt.Errorf("stream cut inside a frame header: %w", err)
	}
	if _, err := io.ReadFull(r, rest[:]); err != nil {
		return frame{}, fmt.Errorf("stream cut inside a frame header: %w", err)
	}
	f.path = string(path)
	f.offset = int64(binary.BigEndian.Uint64(rest[:8]))
	f.length = int64(binary.BigEndian.Uint32(rest[8:]))
	switch f.kind {
	case frameFile:
		if err := checkpoint.CheckPath(f.path); err != nil {
			return frame{}, err
		}
		if f.offset < 0 || f.length > maxFrame {
			return frame{}, fmt.Errorf("frame of %s: offset %d, length %d out of bounds", f.path, f.offset, f.length)
		}
	case frameManifest:
		if f.path != "" || f.offset != 0 || f.length > checkpoint.MaxManifestSize {
			return frame{}, fmt.Errorf("manifest frame: path %q, offset %d, length %d out of bounds", f.path, f.offset, f.length)
		}
	default:
		return frame{}, fmt.Errorf("unknown frame kind %q", f.kind)
	}
	return f, nil
}
