// Package field names a field of ferry-companion's configuration as the
// file writes it, for errors that say which field is wrong and how to fix
// it: sample.window, rebalance.threshold "cpu".high.
package field

import (
	"fmt"
	"strconv"
)

// Path is a field's name in the file: its blocks and attribute joined by
// dots, a labelled block with its label, as in rebalance.threshold "cpu".high.
type Path string

// Child is the attribute or block name within p.
func (p Path) Child(name string) Path {
	if p == "" {
		return Path(name)
	}
	return p + "." + Path(name)
}

// Label is p, a block, with its label: threshold "cpu".
func (p Path) Label(label string) Path {
	return p + " " + Path(strconv.Quote(label))
}

// Error is what is wrong with one field.
type Error struct {
	Path   Path
	Detail string // what is wrong, and what would fix it
	// Also names what sets the field besides the file, if anything: its
	// flag and environment variable, as in "-nomad, NOMAD_ADDR".
	Also string
}

// Errorf is an Error about the field at p.
func Errorf(p Path, format string, args ...any) error {
	return &Error{Path: p, Detail: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Also != "" {
		return fmt.Sprintf("%s (%s): %s", e.Path, e.Also, e.Detail)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Detail)
}
