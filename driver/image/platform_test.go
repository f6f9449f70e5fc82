package image

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/shoenig/test/must"
)

// platformOf parses "os/arch[/variant]" without normalising it.
func platformOf(s string) v1.Platform {
	parts := append(strings.Split(s, "/"), "")
	return v1.Platform{OS: parts[0], Architecture: parts[1], Variant: parts[2]}
}

func descs(platforms ...string) []v1.Descriptor {
	var out []v1.Descriptor
	for i, p := range platforms {
		pl := platformOf(p)
		out = append(out, v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)}, Platform: &pl})
	}
	return out
}

func TestSelectManifest(t *testing.T) {
	cases := []struct {
		node     string
		offered  []string
		want     string // platform of the chosen manifest; "" for none
		fallback bool   // the task asked for an older variant when its own is missing
	}{
		{"linux/amd64", []string{"linux/arm64/v8", "linux/amd64"}, "linux/amd64", false},
		{"linux/arm64", []string{"linux/amd64", "linux/arm64/v8"}, "linux/arm64/v8", false},
		{"linux/arm64/v8", []string{"linux/amd64", "linux/arm64"}, "linux/arm64", false},
		{"linux/aarch64", []string{"linux/arm64"}, "linux/arm64", false},
		{"linux/x86_64", []string{"linux/amd64"}, "linux/amd64", false},
		// The exact variant; older ones only when the task asks, best first.
		{"linux/arm/v7", []string{"linux/arm/v6", "linux/arm/v7"}, "linux/arm/v7", false},
		{"linux/arm/v7", []string{"linux/arm/v5", "linux/arm/v6"}, "", false},
		{"linux/arm/v7", []string{"linux/arm/v5", "linux/arm/v6"}, "linux/arm/v6", true},
		{"linux/amd64/v3", []string{"linux/amd64/v2"}, "", false},
		{"linux/amd64/v3", []string{"linux/amd64/v2"}, "linux/amd64/v2", true},
		{"linux/amd64", []string{"linux/amd64/v3"}, "", true},
		// OS and architecture must match exactly: no 386 on amd64, no
		// 32-bit arm on arm64, no windows on linux.
		{"linux/amd64", []string{"linux/386", "windows/amd64"}, "", false},
		{"linux/arm64", []string{"linux/arm/v7"}, "", false},
		{"linux/amd64", []string{"unknown/unknown"}, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.node, func(t *testing.T) {
			m, ok := selectManifest(platformOf(tc.node), descs(tc.offered...), tc.fallback)
			if tc.want == "" {
				must.False(t, ok, must.Sprintf("chose %v", m.Platform))
				return
			}
			must.True(t, ok)
			must.Eq(t, tc.want, formatPlatform(*m.Platform))
		})
	}
}

func TestOfferedPlatforms(t *testing.T) {
	must.Eq(t, "linux/amd64, linux/arm64/v8", offeredPlatforms(descs("linux/amd64", "unknown/unknown", "linux/arm64/v8", "linux/amd64")))
	must.Eq(t, "none", offeredPlatforms(nil))
}

func TestHumanSize(t *testing.T) {
	must.Eq(t, "512 B", humanSize(512))
	must.Eq(t, "1.5 KiB", humanSize(1536))
	must.Eq(t, "1.2 MiB", humanSize(1258291))
	must.Eq(t, "3.0 GiB", humanSize(3<<30))
}
