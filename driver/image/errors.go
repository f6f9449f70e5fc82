package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Error kinds a caller can test with errors.Is to tell the user what to do.
var (
	// ErrNotFound: the repository, tag, digest or layout tag does not exist.
	ErrNotFound = errors.New("image not found")
	// ErrUnauthorized: the registry refused the credentials (or their absence).
	ErrUnauthorized = errors.New("registry access denied")
	// ErrUnreachable: the registry could not be contacted.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrPlatform: the image has no variant for the node's platform.
	ErrPlatform = errors.New("no image for the node's platform")
	// ErrInvalid: the image or layout is malformed, corrupt or unsafe.
	ErrInvalid = errors.New("invalid image")
	// ErrTooLarge: a layer unpacks to more than the store's MaxLayerSize.
	ErrTooLarge = errors.New("image layer too large")
	// ErrNoSpace: the image store's file system has too little free space
	// to unpack a layer and keep the store's MinFreeSpace.
	ErrNoSpace = errors.New("not enough free space for the image")
)

// kindError carries a user-facing message, an error kind for errors.Is and the
// underlying cause for errors.As.
type kindError struct {
	kind  error
	msg   string
	cause error
}

func (e *kindError) Error() string {
	if e.cause == nil {
		return e.msg
	}
	return e.msg + ": " + e.cause.Error()
}

func (e *kindError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

func newKindError(kind error, cause error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...), cause: cause}
}

// registryError turns an error from talking to a registry into one that says
// what went wrong in the user's terms.
func registryError(ref Ref, err error) error {
	if err == nil {
		return nil
	}
	var kerr *kindError
	if errors.As(err, &kerr) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	}

	var terr *transport.Error
	if errors.As(err, &terr) {
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return notFoundError(ref, err)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return unauthorizedError(ref, err)
			}
		}
		switch terr.StatusCode {
		case http.StatusNotFound:
			return notFoundError(ref, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return unauthorizedError(ref, err)
		}
		return fmt.Errorf("pull %s: %w", ref.display(), err)
	}

	if isNetworkError(err) {
		host := ""
		if ref.Remote != nil {
			host = ref.Remote.Context().RegistryStr()
		}
		return &kindError{
			kind:  ErrUnreachable,
			msg:   fmt.Sprintf("registry %s unreachable", host),
			cause: fmt.Errorf("%w; check the address or the client's network", err),
		}
	}
	return fmt.Errorf("pull %s: %w", ref.display(), err)
}

func notFoundError(ref Ref, cause error) error {
	return newKindError(ErrNotFound, cause, "image %q not found in registry (check the repository and tag)", ref.display())
}

func unauthorizedError(ref Ref, cause error) error {
	return newKindError(ErrUnauthorized, cause,
		"registry refused access to image %q (check the task's auth block or the client's registry credentials, and the repository name)", ref.display())
}

// isNetworkError reports whether err comes from failing to reach a host:
// refused or reset connections, DNS failures, unreachable networks, TLS
// handshake timeouts and other net.Error values.
func isNetworkError(err error) bool {
	var (
		opErr  *net.OpError
		dnsErr *net.DNSError
		netErr net.Error
	)
	switch {
	case errors.As(err, &opErr), errors.As(err, &dnsErr):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &netErr):
		return true
	}
	return false
}
