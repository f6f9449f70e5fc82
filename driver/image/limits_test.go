package image

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// bombLayout writes an OCI layout whose image has one layer, the tar b,
// and returns its directory.
func bombLayout(t *testing.T, b []byte) string {
	t.Helper()
	l, err := testutil.LayerFromBytes(b)
	must.NoError(t, err)
	compressed, err := l.Size()
	must.NoError(t, err)
	t.Logf("layer of %s compresses to %s", humanSize(int64(len(b))), humanSize(compressed))
	must.Less(t, int64(len(b)/100), compressed)
	img, err := testutil.ImageFromLayers(linuxAMD64, v1.Config{}, l)
	must.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "layout")
	testutil.WriteLayout(t, dir, "bomb", img)
	return dir
}

func TestLimits_GzipBombRefused(t *testing.T) {
	const size = 8 << 20
	zeros, err := testutil.Tar(entry{Name: "zeros", Body: strings.Repeat("\x00", size)})
	must.NoError(t, err)
	// A tar reader stops at the end-of-archive marker; the digest (and
	// the limit) cover what follows too.
	padded, err := testutil.Tar(entry{Name: "f", Body: "f"})
	must.NoError(t, err)
	padded = append(padded, make([]byte, size)...)

	for _, tc := range []struct {
		name, what string
		tar        []byte
	}{
		{name: "file of zeros", what: "its files would exceed 1.0 MiB", tar: zeros},
		{name: "zeros after the archive", what: "its uncompressed archive would exceed 1.0 MiB", tar: padded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := bombLayout(t, tc.tar)
			s, _ := newTestStore(t, StoreConfig{MaxLayerSize: 1 << 20})
			_, err := s.Pull(context.Background(), mustParse(t, "oci:"+dir+":bomb"), PullOptions{Platform: linuxAMD64})
			must.ErrorIs(t, err, ErrTooLarge)
			t.Log(err)
			must.StrContains(t, err.Error(), "layer 1/1")
			must.StrContains(t, err.Error(), tc.what)
			must.StrContains(t, err.Error(), "images.max_layer_size")
			must.SliceEmpty(t, layerNames(t, s))
			must.Eq(t, int64(0), s.layerUnpacks.Load())

			// Within the limit, the same layer is fine.
			s2, _ := newTestStore(t, StoreConfig{MaxLayerSize: 16 << 20})
			pullLayout(t, s2, dir, "bomb")
		})
	}
}

func TestLimits_FilesPastTheLimitRefused(t *testing.T) {
	// The files count on their own: a sparse entry or a tar reader
	// quirk could make them larger than the archive.
	b, err := testutil.Tar(entry{Name: "a", Body: strings.Repeat("a", 600)}, entry{Name: "b", Body: strings.Repeat("b", 600)})
	must.NoError(t, err)
	layer := t.TempDir()
	u := newUnpacker(layer, hclog.NewNullLogger())
	u.maxSize = 1000
	err = u.apply(context.Background(), 1, bytes.NewReader(b))
	var le *sizeLimitError
	must.True(t, errors.As(err, &le), must.Sprintf("error: %v", err))
	must.StrContains(t, err.Error(), "its files would exceed 1000 B")
	must.FileExists(t, filepath.Join(layer, "a"))
	must.FileNotExists(t, filepath.Join(layer, "b"))
}

func TestLimits_LimitReader(t *testing.T) {
	for _, tc := range []struct {
		size, limit int
		fails       bool
	}{
		{size: 0, limit: 0},
		{size: 10, limit: 10},
		{size: 11, limit: 10, fails: true},
		{size: 1 << 20, limit: 1000, fails: true},
	} {
		var out bytes.Buffer
		_, err := out.ReadFrom(&limitReader{r: bytes.NewReader(make([]byte, tc.size)), limit: int64(tc.limit)})
		var le *sizeLimitError
		must.Eq(t, tc.fails, errors.As(err, &le), must.Sprintf("size %d, limit %d: %v", tc.size, tc.limit, err))
		if !tc.fails {
			must.NoError(t, err)
			must.Eq(t, tc.size, out.Len())
		}
		must.LessEq(t, tc.limit+1, out.Len())
	}
}

func TestLimits_NotEnoughFreeSpace(t *testing.T) {
	sl := newSharedLayers(t)
	// More than any file system has: the pull must fail before unpacking.
	s, _ := newTestStore(t, StoreConfig{MinFreeSpace: 1 << 50})
	_, err := s.Pull(context.Background(), mustParse(t, "oci:"+sl.dir+":a"), PullOptions{Platform: linuxAMD64})
	must.ErrorIs(t, err, ErrNoSpace)
	t.Log(err)
	must.StrContains(t, err.Error(), "the image store's file system ("+s.dir+") has ")
	must.StrContains(t, err.Error(), "while leaving 1.0 PiB free (the plugin option images.min_free_space)")
	must.SliceEmpty(t, layerNames(t, s))
}

func TestLimits_SpaceCheckedWhileWriting(t *testing.T) {
	b, err := testutil.Tar(entry{Name: "small", Body: "s"}, entry{Name: "big", Body: strings.Repeat("b", 1000)})
	must.NoError(t, err)
	layer := t.TempDir()
	u := newUnpacker(layer, hclog.NewNullLogger())
	var asked []int64
	u.checkSpace = func(need int64) error {
		asked = append(asked, need)
		return &noSpaceError{dir: "/images", free: 10, need: need, keep: 5}
	}
	// Every file is checked once spaceCheckInterval is reached; this one
	// pretends the layer already wrote that much.
	u.spaceChecked = -spaceCheckInterval + 500
	err = u.apply(context.Background(), 1, bytes.NewReader(b))
	var ns *noSpaceError
	must.True(t, errors.As(err, &ns), must.Sprintf("error: %v", err))
	must.Eq(t, []int64{1000}, asked)
	must.FileExists(t, filepath.Join(layer, "small"))
	must.FileNotExists(t, filepath.Join(layer, "big"))
}

func TestLimits_NegativeConfigRefused(t *testing.T) {
	_, err := NewStore(StoreConfig{Dir: t.TempDir(), MaxLayerSize: -1})
	must.ErrorContains(t, err, "max layer size -1 is negative")
	_, err = NewStore(StoreConfig{Dir: t.TempDir(), MinFreeSpace: -1})
	must.ErrorContains(t, err, "min free space -1 is negative")
}
