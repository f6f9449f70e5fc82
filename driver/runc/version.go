package runc

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
)

// Version returns runc's version, e.g. "1.3.3", parsed from `runc --version`.
func (r *Runc) Version(ctx context.Context) (string, error) {
	out, err := r.output(ctx, "--version", "--version")
	if err != nil {
		return "", err
	}
	return parseVersion(out)
}

// parseVersion reads the "runc version X" line of `runc --version`.
func parseVersion(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[0] == "runc" && fields[1] == "version" {
			return strings.TrimPrefix(fields[2], "v"), nil
		}
	}
	return "", fmt.Errorf("runc --version: unexpected output %q", truncate(string(out)))
}
