# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: logging, and the names,
# addresses and ports of the clients.

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

require_root() { ((EUID == 0)) || die "must run as root"; }

client_name() { echo "ferry-c$1"; }
client_ns() { echo "ferry-c$1"; }
client_ip() { echo "$NET.$((10 + $1))"; }
# Loopback port forwarded to client K's HTTP API: 4746, 4846, ...
client_http_port() { echo $((4646 + 100 * $1)); }
