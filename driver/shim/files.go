package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
)

// writeJSON atomically writes v as JSON to path.
func writeJSON(path string, v any, perm os.FileMode) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// readPid reads a pid file.
func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s: %q", path, strings.TrimSpace(string(data)))
	}
	return pid, nil
}

// readExitStatus reads <stateDir>/exit.json.
func readExitStatus(stateDir string) (*ExitStatus, error) {
	var st ExitStatus
	if err := readJSON(statePath(stateDir, exitFile), &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// encodeStatus returns st as one JSON line.
func encodeStatus(st *ExitStatus) ([]byte, error) {
	data, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode exit status: %w", err)
	}
	return append(data, '\n'), nil
}
