package image

import (
	"runtime"
	"sort"
	"strings"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

// nodePlatform fills in an unset platform with the platform this process
// runs on and normalises it (x86_64 -> amd64, arm64/v8 -> arm64, ...).
func nodePlatform(p v1.Platform) v1.Platform {
	if p.OS == "" && p.Architecture == "" {
		d := platforms.DefaultSpec()
		p.OS, p.Architecture, p.Variant = d.OS, d.Architecture, d.Variant
	}
	if p.OS == "" {
		p.OS = runtime.GOOS
	}
	return normalizePlatform(p)
}

func normalizePlatform(p v1.Platform) v1.Platform {
	n := platforms.Normalize(toSpec(p))
	p.OS, p.Architecture, p.Variant = n.OS, n.Architecture, n.Variant
	return p
}

func toSpec(p v1.Platform) specs.Platform {
	return specs.Platform{
		OS:           p.OS,
		Architecture: p.Architecture,
		Variant:      p.Variant,
		OSVersion:    p.OSVersion,
		OSFeatures:   p.OSFeatures,
	}
}

// formatPlatform renders os/arch[/variant] as written in the image.
func formatPlatform(p v1.Platform) string {
	if p.OS == "" && p.Architecture == "" {
		return "unknown"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// sameOSArch reports whether two platforms have the same OS and architecture
// after normalisation; variants are not compared.
func sameOSArch(a, b v1.Platform) bool {
	na, nb := normalizePlatform(a), normalizePlatform(b)
	return na.OS == nb.OS && na.Architecture == nb.Architecture
}

// selectManifest picks the manifest for node from an index's manifests. The
// OS and architecture must match exactly (after normalisation, so arm64 and
// arm64/v8 are one), and so must the variant; only with fallback is the best
// older variant the node can run (amd64/v3 runs v2, arm/v7 runs v6) chosen
// when its own is missing.
func selectManifest(node v1.Platform, manifests []v1.Descriptor, fallback bool) (v1.Descriptor, bool) {
	node = normalizePlatform(node)
	var candidates []v1.Descriptor
	for _, m := range manifests {
		if m.Platform == nil || !sameOSArch(*m.Platform, node) {
			continue
		}
		if normalizePlatform(*m.Platform).Variant == node.Variant {
			return m, true
		}
		candidates = append(candidates, m)
	}
	if !fallback {
		return v1.Descriptor{}, false
	}
	matcher := platforms.Only(toSpec(node))
	var compatible []v1.Descriptor
	for _, m := range candidates {
		if matcher.Match(toSpec(normalizePlatform(*m.Platform))) {
			compatible = append(compatible, m)
		}
	}
	if len(compatible) == 0 {
		return v1.Descriptor{}, false
	}
	sort.SliceStable(compatible, func(i, j int) bool {
		return matcher.Less(toSpec(normalizePlatform(*compatible[i].Platform)), toSpec(normalizePlatform(*compatible[j].Platform)))
	})
	return compatible[0], true
}

// offeredPlatforms lists the platforms of an index's manifests for error
// messages, leaving out attestation manifests (unknown/unknown).
func offeredPlatforms(manifests []v1.Descriptor) string {
	var out []string
	seen := map[string]bool{}
	for _, m := range manifests {
		if m.Platform == nil || m.Platform.OS == "unknown" || m.Platform.OS == "" {
			continue
		}
		s := formatPlatform(*m.Platform)
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
