package plugin

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/jobspec2"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// The schemas are tested through Nomad's own decoding path (HCL → the
// hclspec → msgpack → the struct), as a jobspec and a client's plugin block
// are decoded: a field the struct has and the spec lacks, or a required
// attribute the docs call optional, fails here.

// everyTaskField names every field of a task's config block, as a jobspec
// writes it.
const everyTaskField = `config {
  image             = "registry.example/app:1"
  images            = { amd64 = "registry.example/app:amd64", arm64 = "registry.example/app:arm64" }
  platform_fallback = true
  force_pull        = true
  pull_timeout      = "1m"
  auth {
    username = "u"
    password = "p"
  }
  entrypoint      = ["/bin/app"]
  command         = "/bin/run"
  args            = ["-v"]
  work_dir        = "/srv"
  user            = "1000:1000"
  hostname        = "app"
  readonly_rootfs = true
  cap_add         = ["NET_ADMIN"]
  cap_drop        = ["CHOWN"]
  mount {
    type     = "tmpfs"
    source   = "/src"
    target   = "/scratch"
    readonly = true
    options  = ["size=1m"]
  }
  mounts {
    type     = "bind"
    source   = "/data"
    target   = "/data"
    readonly = true
    options  = ["rbind"]
  }
  volumes = ["/host:/container:ro"]
  ports   = ["http"]
  checkpoint {
    enabled            = true
    tcp_established    = true
    file_locks         = true
    on_restore_failure = "fail"
    restore_wait       = "1m"
    mode               = "lazy"
    lazy_timeout       = "5m"
    interval           = "30m"
    keep               = 3
  }
}`

// everyPluginField names every field of the client's plugin config block.
const everyPluginField = `config {
  runc_path           = "/usr/local/bin/runc"
  criu_path           = "/usr/local/bin/criu"
  data_dir            = "/srv/ferry"
  state_dir           = "/run/ferry-test"
  platform            = "linux/arm64"
  insecure_registries = ["10.0.0.1:5000"]
  checkpoint_dir      = "/mnt/checkpoints"
  allow_caps          = ["chown", "net_admin"]
  oci_layout_dirs     = ["/srv/layouts"]
  volumes {
    enabled = true
  }
  auth {
    config = "/etc/ferry/auth.json"
  }
  gc {
    image       = true
    image_delay = "1m"
    dangling_containers {
      enabled        = true
      period         = "1m"
      creation_grace = "2m"
      dry_run        = true
    }
    checkpoints {
      stale     = "30m"
      unclaimed = "12h"
      failed    = "72h"
      orphan    = "2h"
    }
  }
  nomad {
    address = "http://127.0.0.1:4646"
    token   = "nomad-token"
  }
  consul {
    address = "127.0.0.1:8500"
    token   = "consul-token"
  }
  transfer {
    listen      = "0.0.0.0:4702"
    advertise   = "10.0.0.5:4702"
    ca_file     = "/etc/ferry/ca.pem"
    cert_file   = "/etc/ferry/cert.pem"
    key_file    = "/etc/ferry/key.pem"
    server_name = "client.global.nomad"
    idle_timeout        = "1m"
    max_connections     = 16
    max_checkpoint_size = "64GiB"
    min_free_space      = "1GiB"
    page_server_ports   = "5710-5719"
  }
  images {
    max_layer_size = "4GiB"
    min_free_space = "1GiB"
  }
}`

func TestTaskConfigSpec_EveryField(t *testing.T) {
	tc, err := decodeTask(everyTaskField)
	if err != nil {
		t.Fatal(err)
	}
	requireEveryField(t, "config", reflect.ValueOf(tc))
}

func TestPluginConfigSpec_EveryField(t *testing.T) {
	var c Config
	hclutils.NewConfigParser(configSpec).ParseHCL(t, everyPluginField, &c)
	requireEveryField(t, "config", reflect.ValueOf(c))
}

// A task written from the README's multi-arch example: images and no image.
func TestTaskConfigSpec_ImagesWithoutImage(t *testing.T) {
	tc, err := decodeTask(`config {
  images = { amd64 = "app:amd64", arm64 = "app:arm64" }
}`)
	if err != nil {
		t.Fatal(err)
	}
	if tc.Image != "" || tc.Images["arm64"] != "app:arm64" || tc.Images["amd64"] != "app:amd64" {
		t.Fatalf("decoded %+v", tc)
	}
	if got := imageFor(tc, "linux/arm64"); got != "app:arm64" {
		t.Fatalf("image for linux/arm64 = %q, want app:arm64", got)
	}
	if tc.PullTimeout != "5m" {
		t.Fatalf("pull_timeout defaults to %q, want 5m", tc.PullTimeout)
	}
}

// A field the driver does not know is refused by name when the job is
// placed, as Nomad reports it.
func TestTaskConfigSpec_UnknownField(t *testing.T) {
	_, err := decodeTask(`config {
  imgae = "app:1"
}`)
	if err == nil || !strings.Contains(err.Error(), `"imgae"`) {
		t.Fatalf("err = %v, want one naming imgae", err)
	}
}

// decodeTask decodes a task's config block the way it reaches the driver:
// Nomad's jobspec parser (HCL2), the API's JSON, the driver's spec on the
// client, then the driver's own decoding.
func decodeTask(config string) (TaskConfig, error) {
	var tc TaskConfig
	job, err := jobspec2.Parse("job.nomad.hcl", strings.NewReader(`job "j" {
  group "g" {
    task "t" {
      driver = "ferry"
      `+config+`
    }
  }
}`))
	if err != nil {
		return tc, err
	}
	raw, err := json.Marshal(job.TaskGroups[0].Tasks[0].Config)
	if err != nil {
		return tc, err
	}
	var submitted map[string]any
	if err := json.Unmarshal(raw, &submitted); err != nil {
		return tc, err
	}
	spec, diags := hclspecutils.Convert(taskConfigSpec)
	if diags.HasErrors() {
		return tc, diags
	}
	val, diags, errs := hclutils.ParseHclInterface(submitted, spec, nil)
	if len(errs) > 0 {
		return tc, errors.Join(errs...)
	}
	if diags.HasErrors() {
		return tc, diags
	}
	dtc := &drivers.TaskConfig{}
	if err := dtc.EncodeDriverConfig(val); err != nil {
		return tc, err
	}
	return tc, dtc.DecodeDriverConfig(&tc)
}

// requireEveryField fails for each field of v (by its codec name under
// path) left at its zero value: a field the spec did not fill.
func requireEveryField(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	typ := v.Type()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("codec"), ",")
		if !f.IsExported() || name == "" {
			continue
		}
		fv, fpath := v.Field(i), path+"."+name
		switch {
		case fv.IsZero() || (fv.Kind() == reflect.Slice || fv.Kind() == reflect.Map) && fv.Len() == 0:
			t.Errorf("%s: not decoded through the spec", fpath)
		case fv.Kind() == reflect.Struct:
			requireEveryField(t, fpath, fv)
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct:
			requireEveryField(t, fpath+"[0]", fv.Index(0))
		}
	}
}
