package plugin

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/docker/cli/cli/config"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/image"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// pull fetches the task's image for the node's platform, reporting progress
// as task events.
func (d *Driver) pull(cfg *drivers.TaskConfig, conf *Config, env *environment, req *taskRequest) (*image.Image, error) {
	platform := env.platform

	opts := image.PullOptions{
		Platform:        imagePlatform(platform),
		ForcePull:       req.ForcePull,
		VariantFallback: req.PlatformFallback,
		Timeout:         req.pullTimeout,
		Progress:        func(msg string) { d.emit(cfg, msg, nil) },
	}
	if req.Auth.Username != "" {
		opts.Auth = &authn.Basic{Username: req.Auth.Username, Password: req.Auth.Password}
	} else if conf.Auth.Config != "" {
		opts.Keychain = fileKeychain{path: conf.Auth.Config}
	}
	ctx, cancel := context.WithTimeout(d.ctx, req.pullTimeout)
	defer cancel()
	img, err := env.images.Pull(ctx, req.ref, opts)
	if err != nil {
		return nil, err
	}
	d.emit(cfg, fmt.Sprintf("Using image %s for %s: %s", req.ref, platformString(img.Platform), img.Digest), map[string]string{
		"image":    req.ref.String(),
		"digest":   img.Digest.String(),
		"platform": platformString(img.Platform),
	})
	return img, nil
}

// fileKeychain reads registry credentials from a docker-style config.json
// (the plugin config's auth.config), at every pull so changes apply at once.
type fileKeychain struct{ path string }

func (k fileKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	f, err := os.Open(k.path)
	if err != nil {
		return nil, fmt.Errorf("auth.config: %w", err)
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("auth.config %s: %w", k.path, err)
	}
	ac, err := cf.GetAuthConfig(r.RegistryStr())
	if err != nil {
		return nil, fmt.Errorf("auth.config %s: %w", k.path, err)
	}
	if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == "" && ac.Auth == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		Auth:          ac.Auth,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	}), nil
}

// prefetch pulls the image a checkpoint pushed to this node was taken from,
// while the checkpoint arrives and Nomad hands the allocation over, so that
// the restore finds it cached. It uses the plugin's registry credentials
// only (the task's own come with its start); failing is no error: the
// restore pulls the image again itself.
func (d *Driver) prefetch(conf *Config, env *environment, rec *catalog.Record) {
	logger := d.logger.With("alloc_id", rec.AllocID, "task", rec.Task, "image", rec.ImageRef, "digest", rec.ImageDigest)
	if !sameArch(rec.Platform, env.platform) || rec.ImageDigest == "" {
		return
	}
	ref, err := image.ParseRef(rec.ImageRef, conf.InsecureRegistries)
	if err != nil || ref.Remote == nil {
		return // an oci: layout on the node, or nothing to pull
	}
	ref.Remote = ref.Remote.Context().Digest(rec.ImageDigest)
	opts := image.PullOptions{Platform: imagePlatform(env.platform), Timeout: 5 * time.Minute}
	if conf.Auth.Config != "" {
		opts.Keychain = fileKeychain{path: conf.Auth.Config}
	}
	ctx, cancel := context.WithTimeout(d.ctx, opts.Timeout)
	defer cancel()
	start := time.Now()
	if _, err := env.images.Pull(ctx, ref, opts); err != nil {
		logger.Debug("prefetching the image of an incoming checkpoint failed", "error", err)
		return
	}
	logger.Debug("image of an incoming checkpoint prefetched", "duration", time.Since(start))
}
