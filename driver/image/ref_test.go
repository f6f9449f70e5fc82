package image

import (
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseRef_Valid(t *testing.T) {
	cases := []struct {
		in        string
		insecure  []string
		want      string // String()
		layoutDir string
		layoutTag string
		scheme    string // registry scheme for remote references
	}{
		{in: "busybox", want: "index.docker.io/library/busybox:latest", scheme: "https"},
		{in: "docker.io/library/busybox:1.36", want: "index.docker.io/library/busybox:1.36", scheme: "https"},
		{in: "127.0.0.1:5000/busybox:1", want: "127.0.0.1:5000/busybox:1", scheme: "http"},
		{in: "ghcr.io/org/app@" + testDigest, want: "ghcr.io/org/app@" + testDigest, scheme: "https"},
		{in: "ghcr.io/org/app:1.0@" + testDigest, want: "ghcr.io/org/app@" + testDigest, scheme: "https"},
		{in: "registry.internal:5000/team/app:v2", want: "registry.internal:5000/team/app:v2", scheme: "https"},
		{in: "registry.internal:5000/team/app:v2", insecure: []string{"registry.internal:5000"}, want: "registry.internal:5000/team/app:v2", scheme: "http"},
		{in: "Registry.Internal:5000/team/app:v2", insecure: []string{"http://registry.internal:5000/"}, want: "Registry.Internal:5000/team/app:v2", scheme: "http"},
		{in: "oci:/var/lib/images/busybox", want: "oci:/var/lib/images/busybox", layoutDir: "/var/lib/images/busybox"},
		{in: "oci:/var/lib/images/busybox/:v1.2", want: "oci:/var/lib/images/busybox:v1.2", layoutDir: "/var/lib/images/busybox", layoutTag: "v1.2"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			ref, err := ParseRef(tc.in, tc.insecure)
			must.NoError(t, err)
			must.Eq(t, tc.in, ref.Raw)
			must.Eq(t, tc.want, ref.String())
			must.Eq(t, tc.layoutDir, ref.LayoutDir)
			must.Eq(t, tc.layoutTag, ref.LayoutTag)
			if tc.layoutDir == "" {
				must.NotNil(t, ref.Remote)
				must.Eq(t, tc.scheme, ref.Remote.Context().Scheme())
			} else {
				must.Nil(t, ref.Remote)
			}
		})
	}
}

func TestParseRef_Invalid(t *testing.T) {
	cases := []struct {
		in   string
		want string // part of the message besides the value and the hint
	}{
		{in: "Busybox", want: "repository can only contain"},
		{in: "busybox@sha256:abc", want: "invalid checksum digest length"},
		{in: "busybox@md5:0123", want: "unsupported digest algorithm"},
		{in: "busybox:bad tag", want: "whitespace"},
		{in: " busybox", want: "whitespace"},
		{in: "https://ghcr.io/org/app:1", want: `remove "https://"`},
		{in: "docker://busybox", want: `remove "docker://"`},
		{in: "oci:", want: "layout directory is empty"},
		{in: "oci:relative/dir", want: "not an absolute path"},
		{in: "oci:/images/x:", want: "tag after the layout directory is empty"},
		{in: "oci:/images/x:bad*tag", want: "not allowed"},
		{in: "busybox:", want: "tag"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParseRef(tc.in, nil)
			must.Error(t, err)
			msg := err.Error()
			must.StrContains(t, msg, `image "`+tc.in+`"`)
			must.StrContains(t, msg, tc.want)
			must.StrContains(t, msg, "use host/repo:tag, host/repo@sha256:<64 hex>, or oci:/path/to/layout[:tag]")
		})
	}
}

func TestParseRef_Empty(t *testing.T) {
	for _, in := range []string{"", "   "} {
		_, err := ParseRef(in, nil)
		must.Error(t, err)
		must.True(t, strings.HasPrefix(err.Error(), "image: "), must.Sprint(err))
		must.StrContains(t, err.Error(), "empty")
	}
}
