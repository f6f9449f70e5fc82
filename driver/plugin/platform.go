package plugin

import (
	"fmt"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

// nodePlatform is the platform images are chosen for: the plugin config's
// `platform` when set, else the node's own, normalised (x86_64 → amd64).
func nodePlatform(override string) (string, error) {
	if override != "" {
		p, err := parsePlatform(override)
		if err != nil {
			return "", err
		}
		return platforms.Format(p), nil
	}
	return platforms.Format(platforms.Normalize(platforms.DefaultSpec())), nil
}

func parsePlatform(s string) (specs.Platform, error) {
	p, err := platforms.Parse(s)
	if err != nil {
		return specs.Platform{}, fmt.Errorf("%q is not a platform; use os/arch[/variant] such as \"linux/arm64\"", s)
	}
	return platforms.Normalize(p), nil
}

// imagePlatform converts a platform string to go-containerregistry's type.
func imagePlatform(s string) v1.Platform {
	p, _ := parsePlatform(s)
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

func platformString(p v1.Platform) string {
	return platforms.Format(specs.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant})
}

func parseDigest(s string) (v1.Hash, error) { return v1.NewHash(s) }
