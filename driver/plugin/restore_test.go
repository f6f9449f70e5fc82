package plugin

import (
	"testing"

	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/shoenig/test/must"
)

func TestVersionChecks(t *testing.T) {
	must.True(t, older("4.1.1", "4.2.1"))
	must.False(t, older("4.2.1", "4.2.1"))
	must.False(t, older("4.3", "4.2.1"))
	must.False(t, older("unknown", "4.2.1"))
	must.Eq(t, "1.3", minor("1.3.3"))
	must.Eq(t, "1.3", minor("1.3.0-rc.1"))
	must.NotEq(t, minor("1.2.5"), minor("1.3.3"))
}

func TestValidateCheckpointConfig(t *testing.T) {
	conf := &Config{}
	task := &drivers.TaskConfig{}
	base := TaskConfig{Image: "registry.example.com/app:1", PullTimeout: "1m"}

	tc := base
	tc.Checkpoint = Checkpoint{Enabled: true, OnRestoreFailure: "retry"}
	_, err := conf.validateTask(tc, task, "linux/amd64")
	must.ErrorContains(t, err, `checkpoint.on_restore_failure: "retry"`)

	tc.Checkpoint = Checkpoint{Enabled: true, RestoreWait: "soon"}
	_, err = conf.validateTask(tc, task, "linux/amd64")
	must.ErrorContains(t, err, "checkpoint.restore_wait")

	tc.Checkpoint = Checkpoint{Enabled: true, Mode: "postcopy"}
	_, err = conf.validateTask(tc, task, "linux/amd64")
	must.ErrorContains(t, err, `checkpoint.mode: "postcopy" is not supported; use "copy" (the default) or "lazy"`)

	tc.Checkpoint = Checkpoint{Enabled: true, Mode: "lazy", LazyTimeout: "0s"}
	_, err = conf.validateTask(tc, task, "linux/amd64")
	must.ErrorContains(t, err, `checkpoint.lazy_timeout: "0s" is not a positive duration`)

	for _, bad := range []struct {
		c    Checkpoint
		want string
	}{
		{Checkpoint{Enabled: true, Interval: "often", Keep: 2}, `checkpoint.interval: "often" is not a positive duration`},
		{Checkpoint{Enabled: true, Interval: "5s", Keep: 2}, `checkpoint.interval: "5s" is shorter than 10s`},
		{Checkpoint{Enabled: true, Interval: "30m", Keep: 0}, `checkpoint.keep: 0 must be at least 1`},
		{Checkpoint{Interval: "30m", Keep: 2}, `checkpoint.interval: periodic checkpoints need checkpoint.enabled = true`},
	} {
		tc.Checkpoint = bad.c
		_, err = conf.validateTask(tc, task, "linux/amd64")
		must.ErrorContains(t, err, bad.want)
	}

	tc.Checkpoint = Checkpoint{Enabled: true}
	req, err := conf.validateTask(tc, task, "linux/amd64")
	must.NoError(t, err)
	must.Eq(t, "2m0s", req.restoreWait.String())
	must.Eq(t, "10m0s", req.lazyTimeout.String())
	must.Eq(t, 0, req.interval, must.Sprint("no periodic checkpoints unless asked"))

	tc.Checkpoint = Checkpoint{Enabled: true, Interval: "30m", Keep: 3}
	req, err = conf.validateTask(tc, task, "linux/amd64")
	must.NoError(t, err)
	must.Eq(t, "30m0s", req.interval.String())
}

func TestImagesMap(t *testing.T) {
	tc := TaskConfig{Image: "reg/app:any", Images: map[string]string{"amd64": "reg/app:x86", "arm64": "reg/app:arm"}}
	must.Eq(t, "reg/app:x86", imageFor(tc, "linux/amd64"))
	must.Eq(t, "reg/app:arm", imageFor(tc, "linux/arm64/v8"))
	must.Eq(t, "reg/app:any", imageFor(tc, "linux/riscv64"))

	conf := &Config{}
	_, err := conf.validateTask(TaskConfig{Images: map[string]string{"arm64": "reg/app:arm"}, PullTimeout: "1m"}, &drivers.TaskConfig{}, "linux/amd64")
	must.ErrorContains(t, err, "image: required, unless images has an entry for this node's platform linux/amd64")
	req, err := conf.validateTask(TaskConfig{Images: map[string]string{"amd64": "reg/app:x86"}, PullTimeout: "1m"}, &drivers.TaskConfig{}, "linux/amd64")
	must.NoError(t, err)
	must.StrContains(t, req.ref.String(), "reg/app:x86")

	for key, want := range map[string]string{
		"x86_64":      `images: key "x86_64" must be written "amd64"`,
		"aarch64":     `images: key "aarch64" must be written "arm64"`,
		"linux/arm64": `images: key "linux/arm64" is not a CPU architecture`,
	} {
		_, err := conf.validateTask(TaskConfig{Image: "reg/app:any", Images: map[string]string{key: "reg/app:x"}, PullTimeout: "1m"}, &drivers.TaskConfig{}, "linux/amd64")
		must.ErrorContains(t, err, want)
	}
	_, err = conf.validateTask(TaskConfig{Images: map[string]string{"amd64": ""}, PullTimeout: "1m"}, &drivers.TaskConfig{}, "linux/amd64")
	must.ErrorContains(t, err, "images: amd64: the image reference is empty")
}
