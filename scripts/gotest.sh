#!/usr/bin/env bash
# gotest.sh ARGS...: `go test -v ARGS...`, its output as it comes, then a
# summary of the tests that failed, each with the last lines it logged, so
# that the end of a long run (what a CI log keeps) says what failed and why.
# The exit status is go test's.
set -uo pipefail

GO=${GO:-go}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

"$GO" test -v "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

if [ "$status" -ne 0 ]; then
	echo
	echo "==> failed (each with the last 40 lines it logged):"
	# A test's lines (its subtests' included) run from its "=== RUN" to
	# its "--- FAIL"; a panic or timeout ends the package's output instead.
	awk '
		/^=== (RUN|CONT|PAUSE|NAME)/ {
			name = $3; sub(/\/.*/, "", name)
			if ($2 == "RUN" && name == $3) n[name] = 0
		}
		/^--- FAIL: / {
			t = $3; print "--- FAIL: " t
			k = n[t]; from = (k > 40) ? k - 40 : 0
			for (i = from; i < k; i++) print "    " buf[t, i]
			next
		}
		/^(panic: |FAIL\t)/ || /test timed out/ { print }
		name != "" { buf[name, n[name]++] = $0 }
	' "$log"
fi
exit "$status"
