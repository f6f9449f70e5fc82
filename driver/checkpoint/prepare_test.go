package checkpoint

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
)

// checkpointWithRootfs makes a fake checkpoint whose rootfs.tar holds
// tarData; its manifest no longer matches, which PrepareTaskDir does not
// check.
func checkpointWithRootfs(t *testing.T, tarData []byte) string {
	t.Helper()
	dir := fakeCheckpoint(t)
	must.NoError(t, os.WriteFile(filepath.Join(dir, RootfsName), tarData, 0o600))
	return dir
}

func TestPrepareTaskDir(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "upper")
	must.NoError(t, os.Mkdir(src, 0o700))
	upperTree(t, src)
	var buf bytes.Buffer
	must.NoError(t, packTree(context.Background(), src, &buf))
	dir := checkpointWithRootfs(t, buf.Bytes())

	taskDir := filepath.Join(t.TempDir(), "tasks", "new")
	must.NoError(t, PrepareTaskDir(dir, taskDir))
	fi, err := os.Stat(filepath.Join(taskDir, "upper"))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o700), fi.Mode().Perm())
	got, err := os.ReadFile(filepath.Join(taskDir, SpecName))
	must.NoError(t, err)
	must.Eq(t, `{"ociVersion":"1.2.1"}`, string(got))
	fi, err = os.Stat(filepath.Join(taskDir, SpecName))
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o600), fi.Mode().Perm())
	val, err := getXattr(filepath.Join(taskDir, "upper", "opaque"), "trusted.overlay.opaque")
	must.NoError(t, err)
	must.Eq(t, "y", val)

	// An upper dir with something in it is not overwritten.
	err = PrepareTaskDir(dir, taskDir)
	must.ErrorContains(t, err, "is not empty")

	// An empty one is fine.
	other := filepath.Join(t.TempDir(), "task")
	must.NoError(t, os.MkdirAll(filepath.Join(other, "upper"), 0o700))
	must.NoError(t, PrepareTaskDir(dir, other))
}

func TestPrepareTaskDirRefuses(t *testing.T) {
	requireRoot(t)
	// No manifest: not a (complete) checkpoint.
	dir := fakeCheckpoint(t)
	must.NoError(t, os.Remove(filepath.Join(dir, ManifestName)))
	err := PrepareTaskDir(dir, filepath.Join(t.TempDir(), "task"))
	must.ErrorIs(t, err, ErrNoManifest)

	// A rootfs.tar that climbs out leaves nothing behind.
	dir = checkpointWithRootfs(t, evilTar(t, &tar.Header{Name: "../../evil", Typeflag: tar.TypeReg}))
	base := t.TempDir()
	taskDir := filepath.Join(base, "task")
	err = PrepareTaskDir(dir, taskDir)
	must.ErrorContains(t, err, `entry "../../evil" escapes the directory`)
	must.DirNotExists(t, filepath.Join(taskDir, "upper"))
	must.FileNotExists(t, filepath.Join(taskDir, SpecName))
	must.FileNotExists(t, filepath.Join(base, "evil"))
}

func TestRebaseSpec(t *testing.T) {
	old := runctest.Spec([]string{"sh", "-c", "true"}, "/ferry-test/abc")
	old.Root = &specs.Root{Path: "/var/lib/ferry/tasks/old/rootfs", Readonly: true}
	old.Annotations = map[string]string{
		"keep":                    "me",
		runc.CriuConfigAnnotation: "/var/lib/ferry/tasks/old/" + CriuConfigName,
	}
	data, err := json.Marshal(old)
	must.NoError(t, err)
	taskDir := t.TempDir()
	must.NoError(t, os.WriteFile(filepath.Join(taskDir, SpecName), data, 0o600))

	// Closing TCP connections needs a CRIU configuration file.
	must.NoError(t, RebaseSpec(taskDir, runc.RestoreOptions{TCPEstablished: true, TCPClose: true}))
	got := readSpec(t, taskDir)
	must.Eq(t, filepath.Join(taskDir, "rootfs"), got.Root.Path)
	must.True(t, got.Root.Readonly)
	conf := filepath.Join(taskDir, CriuConfigName)
	must.Eq(t, conf, got.Annotations[runc.CriuConfigAnnotation])
	content, err := os.ReadFile(conf)
	must.NoError(t, err)
	must.Eq(t, "tcp-close\n", string(content))

	// The rest of the spec is kept.
	want := *old
	want.Root = got.Root
	want.Annotations = map[string]string{"keep": "me", runc.CriuConfigAnnotation: conf}
	must.Eq(t, &want, got)

	// Without one, the file goes; the spec still names it, for a later
	// dump's options.
	must.NoError(t, RebaseSpec(taskDir, runc.RestoreOptions{TCPEstablished: true}))
	got = readSpec(t, taskDir)
	must.Eq(t, map[string]string{"keep": "me", runc.CriuConfigAnnotation: conf}, got.Annotations)
	must.FileNotExists(t, conf)
	must.NoError(t, RemoveCriuConfig(taskDir))

	must.ErrorContains(t, RebaseSpec(t.TempDir(), runc.RestoreOptions{}), "rebase spec")
}

func TestManifestRestoreOptions(t *testing.T) {
	m := &Manifest{Options: Options{TCPEstablished: true, FileLocks: true}}
	must.Eq(t, runc.RestoreOptions{TCPEstablished: true, FileLocks: true}, m.RestoreOptions(false))
	must.Eq(t, runc.RestoreOptions{TCPClose: true, FileLocks: true}, m.RestoreOptions(true))
	m = &Manifest{}
	must.Eq(t, runc.RestoreOptions{}, m.RestoreOptions(true))
}

func TestParseCriuVersion(t *testing.T) {
	v, err := parseCriuVersion([]byte("Version: 4.2.1\nGitID: v4.2.1\n"))
	must.NoError(t, err)
	must.Eq(t, "4.2.1", v)
	_, err = parseCriuVersion([]byte("criu?"))
	must.ErrorContains(t, err, "unexpected output")
}
