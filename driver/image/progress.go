package image

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// shortDigest abbreviates a digest for progress lines.
func shortDigest(d v1.Hash) string {
	h := d.Hex
	if len(h) > 12 {
		h = h[:12] + "…"
	}
	return d.Algorithm + ":" + h
}

// humanSize renders a byte count with binary units (1.2 MiB).
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
