package plugin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/nomad/plugins/drivers"
	pstructs "github.com/hashicorp/nomad/plugins/shared/structs"
)

const fingerprintPeriod = 30 * time.Second

// criuProbe caches the result of `criu check`, which is slow to repeat,
// and whether lazy (post-copy) migration works here.
type criuProbe struct {
	mu      sync.Mutex
	path    string
	at      time.Time
	version string
	ok      bool
	reason  string
	// lazy: CRIU can migrate lazily here (checkpoint.LazySupport); when
	// not, lazyReason says why.
	lazy       bool
	lazyReason string
}

// lazySupport reports, from the last get, whether lazy migration works
// here, and why not.
func (p *criuProbe) lazySupport() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lazy, p.lazyReason
}

func (p *criuProbe) get(ctx context.Context, path string) (version string, ok bool, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.path == path && time.Since(p.at) < 10*time.Minute {
		return p.version, p.ok, p.reason
	}
	p.path, p.at = path, time.Now()
	p.version, p.ok, p.reason = "", false, ""
	p.lazy, p.lazyReason = false, "checkpointing is not available here"
	version, err := checkpoint.CriuVersion(ctx, path)
	if err != nil {
		p.reason = fmt.Sprintf("criu not usable: %v; install CRIU >= 4.2 or set criu_path", err)
		return p.version, p.ok, p.reason
	}
	p.version = version
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	if err != nil {
		p.reason = "criu check failed: " + lastLine(string(out))
		return p.version, p.ok, p.reason
	}
	p.ok = true
	p.lazy, p.lazyReason = checkpoint.LazySupport(ctx, path)
	return p.version, p.ok, p.reason
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func (d *Driver) Fingerprint(ctx context.Context) (<-chan *drivers.Fingerprint, error) {
	ch := make(chan *drivers.Fingerprint)
	go func() {
		defer close(ch)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.ctx.Done():
				return
			case <-timer.C:
				timer.Reset(fingerprintPeriod)
			}
			select {
			case ch <- d.fingerprint(ctx):
			case <-ctx.Done():
				return
			case <-d.ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// fingerprint reports the driver healthy when runc works; checkpointing is an
// attribute, true only when `criu check` passes.
func (d *Driver) fingerprint(ctx context.Context) *drivers.Fingerprint {
	conf, env, err := d.current()
	if err != nil {
		return &drivers.Fingerprint{Health: drivers.HealthStateUndetected, HealthDescription: err.Error()}
	}
	env.startNode()
	platform := env.platform

	attrs := map[string]*pstructs.Attribute{
		sdk.AttrDriver:        pstructs.NewBoolAttribute(true),
		sdk.AttrVersion:       pstructs.NewStringAttribute(Version),
		sdk.AttrPlatform:      pstructs.NewStringAttribute(platform),
		sdk.AttrCheckpointDir: pstructs.NewStringAttribute(env.checkpoints),
	}
	fp := &drivers.Fingerprint{Attributes: attrs, Health: drivers.HealthStateHealthy, HealthDescription: drivers.DriverHealthy}

	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	criuVersion, criuOK, criuReason := env.criu.get(cctx, conf.CriuPath)
	if criuVersion != "" {
		attrs[sdk.AttrCriuVersion] = pstructs.NewStringAttribute(criuVersion)
	}
	attrs[sdk.AttrCheckpoint] = pstructs.NewBoolAttribute(criuOK)
	if !criuOK {
		d.logger.Debug("checkpointing unavailable", "reason", criuReason)
	}
	lazy, lazyReason := env.criu.lazySupport()
	attrs[sdk.AttrCheckpointLazy] = pstructs.NewBoolAttribute(lazy)
	if !lazy {
		d.logger.Debug("lazy migration unavailable", "reason", lazyReason)
	}

	if os.Geteuid() != 0 {
		fp.Health, fp.HealthDescription = drivers.HealthStateUnhealthy, "the ferry driver must run as root (run the Nomad client as root)"
		return fp
	}
	runcVersion, err := env.runc.Version(cctx)
	if err != nil {
		fp.Health = drivers.HealthStateUnhealthy
		fp.HealthDescription = fmt.Sprintf("runc (%s) not usable: %v; install runc >= 1.2 or set runc_path", conf.RuncPath, err)
		return fp
	}
	attrs[sdk.AttrRuncVersion] = pstructs.NewStringAttribute(runcVersion)
	return fp
}
