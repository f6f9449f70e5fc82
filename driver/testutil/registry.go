package testutil

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// RegistryBinary is the docker distribution registry StartRegistry runs
// (Debian package docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a registry process serving plain HTTP on 127.0.0.1.
type Registry struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	*Daemon
}

// StartRegistry starts a registry with a temporary storage directory on a
// free loopback port, waits until it answers /v2/, and stops it when the test
// ends. It returns "127.0.0.1:PORT". Without the registry binary the test is
// skipped, unless the CI environment variable is set, in which case it
// fails.
func StartRegistry(t testing.TB) string {
	t.Helper()
	return RunRegistry(t).Addr
}

// RunRegistry is StartRegistry for tests that also need to stop the registry
// before the test ends (e.g. to prove a cached image needs no network).
func RunRegistry(t testing.TB) *Registry {
	t.Helper()
	return RunRegistryWith(t, RegistryOptions{})
}

// RegistryOptions configure RunRegistryWith.
type RegistryOptions struct {
	// Username and Password, when set, make the registry require HTTP
	// basic authentication (htpasswd) for every request.
	Username string
	Password string
}

// RunRegistryWith is RunRegistry with options, e.g. authentication.
func RunRegistryWith(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		msg := fmt.Sprintf("registry binary %s not found (install Debian's docker-registry package): %v", RegistryBinary, err)
		if os.Getenv("CI") == "" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	// Not t.TempDir: a caller that keeps the registry for a whole package
	// (dropping cleanups) must not lose its storage when the test that
	// started it ends.
	dir, err := os.MkdirTemp("", "ferry-registry-")
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var lastErr error
	// The free port may be taken between probing and binding: retry.
	for attempt := 0; attempt < 3; attempt++ {
		r, err := startRegistry(dir, attempt, opts)
		if err == nil {
			t.Cleanup(r.Stop)
			return r
		}
		lastErr = err
	}
	t.Fatalf("start registry: %v", lastErr)
	return nil
}

func startRegistry(dir string, attempt int, opts RegistryOptions) (*Registry, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	storage := filepath.Join(dir, fmt.Sprintf("storage-%d", attempt))
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, storage, addr)
	if opts.Username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return nil, err
		}
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: ferry-test\n    path: %s\n", htpasswd)
	}
	configPath := filepath.Join(dir, fmt.Sprintf("config-%d.yml", attempt))
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, err
	}

	d, err := StartDaemon(RegistryBinary, "", "serve", configPath)
	if err != nil {
		return nil, err
	}
	r := &Registry{Addr: addr, Daemon: d}

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-r.Exited():
			return nil, fmt.Errorf("registry exited early (%v): %s", r.ExitErr(), r.Log())
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (opts.Username != "" && resp.StatusCode == http.StatusUnauthorized) {
				return r, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Stop()
	return nil, fmt.Errorf("registry on %s did not answer /v2/ within 15s: %s", addr, r.Log())
}
