package image

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// layoutPrefix introduces an OCI image layout reference, following skopeo's
// transport naming ("oci:DIR[:TAG]").
const layoutPrefix = "oci:"

// refHint is appended to every reference parse error.
const refHint = "use host/repo:tag, host/repo@sha256:<64 hex>, or oci:/path/to/layout[:tag]"

// Ref is a parsed task `image` value.
type Ref struct {
	// Raw is the value as written by the user.
	Raw string
	// Remote is set for registry references. References without a registry
	// default to docker.io and references without a tag default to
	// "latest", as go-containerregistry does.
	Remote name.Reference
	// LayoutDir is set for "oci:DIR[:TAG]": an OCI image layout directory on
	// the node.
	LayoutDir string
	// LayoutTag is the TAG after DIR, matched against the index's
	// org.opencontainers.image.ref.name annotation. Empty selects the only
	// (or first) manifest.
	LayoutTag string
}

// ParseRef parses a task's image value. Registries listed in
// insecureRegistries (host:port, as written in the reference) may be reached
// over plain HTTP.
func ParseRef(s string, insecureRegistries []string) (Ref, error) {
	if strings.TrimSpace(s) == "" {
		return Ref{}, fmt.Errorf("image: value is empty; %s", refHint)
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return Ref{}, refError(s, "contains whitespace")
	}
	if strings.HasPrefix(s, layoutPrefix) {
		return parseLayoutRef(s)
	}
	return parseRemoteRef(s, insecureRegistries)
}

func refError(s, what string) error {
	return fmt.Errorf("image %q: %s; %s", s, what, refHint)
}

func parseLayoutRef(s string) (Ref, error) {
	rest := strings.TrimPrefix(s, layoutPrefix)
	// Like skopeo, the directory ends at the first colon.
	dir, tag, hasTag := strings.Cut(rest, ":")
	switch {
	case dir == "":
		return Ref{}, refError(s, "the OCI layout directory is empty")
	case !filepath.IsAbs(dir):
		return Ref{}, refError(s, fmt.Sprintf("the OCI layout directory %q is not an absolute path", dir))
	case hasTag && tag == "":
		return Ref{}, refError(s, "the tag after the layout directory is empty (drop the trailing colon to use the layout's only image)")
	case hasTag && !validLayoutTag(tag):
		return Ref{}, refError(s, fmt.Sprintf("the layout tag %q contains characters not allowed in org.opencontainers.image.ref.name", tag))
	}
	return Ref{Raw: s, LayoutDir: filepath.Clean(dir), LayoutTag: tag}, nil
}

// validLayoutTag accepts the characters the OCI image spec allows in the
// org.opencontainers.image.ref.name annotation.
func validLayoutTag(tag string) bool {
	for _, r := range tag {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("-._:@+/", r):
		default:
			return false
		}
	}
	return true
}

func parseRemoteRef(s string, insecureRegistries []string) (Ref, error) {
	if i := strings.Index(s, "://"); i >= 0 {
		return Ref{}, refError(s, fmt.Sprintf("a reference has no URL scheme; remove %q (list the registry in the insecure registries option to use plain HTTP)", s[:i+3]))
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return Ref{}, refError(s, remoteParseProblem(s))
	}
	for _, insecure := range insecureRegistries {
		if sameRegistry(ref.Context().RegistryStr(), insecure) {
			ref, err = name.ParseReference(s, name.Insecure)
			if err != nil {
				return Ref{}, refError(s, remoteParseProblem(s))
			}
			break
		}
	}
	return Ref{Raw: s, Remote: ref}, nil
}

// sameRegistry compares a parsed registry host with an entry of the insecure
// registries list, ignoring case and an accidental scheme or trailing slash.
func sameRegistry(parsed, listed string) bool {
	listed = strings.TrimSpace(listed)
	listed = strings.TrimPrefix(listed, "http://")
	listed = strings.TrimPrefix(listed, "https://")
	listed = strings.TrimSuffix(listed, "/")
	if listed == "docker.io" {
		listed = name.DefaultRegistry
	}
	return listed != "" && strings.EqualFold(parsed, listed)
}

// remoteParseProblem explains why name.ParseReference refused s, which only
// says "could not parse reference".
func remoteParseProblem(s string) string {
	var err error
	if strings.Contains(s, "@") {
		_, err = name.NewDigest(s)
	} else {
		_, err = name.NewTag(s)
	}
	var bad *name.ErrBadName
	if err != nil && errors.As(err, &bad) {
		return bad.Error()
	}
	return "not a valid image reference"
}

// IsLayout reports whether r names an OCI image layout on the node.
func (r Ref) IsLayout() bool { return r.LayoutDir != "" }

// String returns the canonical form of the reference: the fully qualified
// registry name (e.g. index.docker.io/library/busybox:latest) or
// "oci:DIR[:TAG]".
func (r Ref) String() string {
	switch {
	case r.Remote != nil:
		return r.Remote.Name()
	case r.LayoutDir != "":
		if r.LayoutTag != "" {
			return layoutPrefix + r.LayoutDir + ":" + r.LayoutTag
		}
		return layoutPrefix + r.LayoutDir
	default:
		return r.Raw
	}
}

// display is how the reference appears in messages: as the user wrote it.
func (r Ref) display() string {
	if r.Raw != "" {
		return r.Raw
	}
	return r.String()
}
