package transfer

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
)

// NewSecret returns a new per-move secret and its sha256 (hex), the value a
// catalog.Grant records.
func NewSecret() (secret, sha string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	secret = base64.RawURLEncoding.EncodeToString(b)
	return secret, HashSecret(secret)
}

// HashSecret returns the sha256 (hex) of secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// secretMatches compares secret with a recorded hash in constant time.
func secretMatches(secret, sha string) bool {
	got := HashSecret(secret)
	return subtle.ConstantTimeCompare([]byte(got), []byte(strings.ToLower(sha))) == 1
}

// setSecret and secretOf carry the secret in the Authorization header.
func setSecret(h http.Header, secret string) { h.Set("Authorization", "Bearer "+secret) }

func secretOf(r *http.Request) string {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(v)
}
