package runc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
)

// maxMessage bounds the length of a runc message carried in an error.
const maxMessage = 4096

// logLine is one line of runc's JSON log (--log-format json).
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
}

// ParseLog extracts runc's error messages from its log output (stderr or a
// --log file). JSON lines at level error or fatal are joined with "; ".
// When there are none, any lines that are not JSON (for example text
// printed by runc when it logs to a file) are returned instead.
func ParseLog(data []byte) string {
	var errs, plain []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var l logLine
		if line[0] == '{' && json.Unmarshal([]byte(line), &l) == nil {
			switch l.Level {
			case "error", "fatal", "panic":
				errs = append(errs, l.Msg)
			}
			continue
		}
		plain = append(plain, line)
	}
	msgs := errs
	if len(msgs) == 0 {
		msgs = plain
	}
	return truncate(strings.Join(dedupe(msgs), "; "))
}

// dedupe removes messages already contained in another message: runc
// often logs an error and prints the same text again.
func dedupe(msgs []string) []string {
	out := make([]string, 0, len(msgs))
	for i, m := range msgs {
		dup := false
		for j, o := range msgs {
			if i != j && strings.Contains(o, m) && (len(o) > len(m) || j < i) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, m)
		}
	}
	return out
}

func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return s[:maxMessage] + "..."
}
