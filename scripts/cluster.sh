#!/usr/bin/env bash
# Ferry development cluster on one host.
#
#   scripts/cluster.sh up [--clients N]   start (or complete) the cluster, wait until ready
#   scripts/cluster.sh env                print the environment for talking to it
#   scripts/cluster.sh status             short summary
#   scripts/cluster.sh restart-client K   SIGTERM client K (no drain) and start it again
#   scripts/cluster.sh companion          resubmit the ferry-companion system job
#   scripts/cluster.sh down [--purge]     stop everything `up` started; --purge also
#                                         removes /var/lib/ferry-dev and the runtime state
#
# Layout. Every address lives either on loopback or inside a network
# namespace this script creates; nothing is configured on the host's own
# interfaces:
#
#   ferry-hub   namespace with bridge ferry0 (10.97.0.1/24) running a Consul dev
#               agent (:8500), the Nomad server (:4646/:4647) and an OCI
#               registry (:5000)
#   ferry-cK    one namespace per Nomad client K (1..N), eth0 = 10.97.0.(10+K)/24,
#               a veth whose other end is enslaved to ferry0
#   127.0.0.1   socat forwarders in the root namespace: 4646, 8500 and 5000 to
#               the hub, so NOMAD_ADDR=http://127.0.0.1:4646 and images are
#               pushed to 127.0.0.1:5000 (jobs name them 10.97.0.1:5000); and
#               4646+100*K (4746, 4846, ...) to client K's HTTP API, which is
#               the address the client advertises
#
# Agents are started with `nsenter --net=...` (not `ip netns exec`) so they
# stay in the host's mount namespace, which the driver's overlay mounts and
# CRIU need. Each daemon runs in its own session; its pid (and start time, to
# survive pid reuse) is kept in $RUN/pids/<name>.pid (RUN below) and its log in
# /var/log/ferry-dev/<name>.log. Generated configs are in /var/lib/ferry-dev/etc.
#
# Environment:
#   FERRY_DRIVER_BIN         driver binary to install (default <repo>/bin/nomad-driver-ferry)
#   FERRY_SKIP_DRIVER_CHECK  1 = do not wait for the ferry driver to be detected;
#                            a binary that is not a Nomad plugin is then left out
#   FERRY_LOG_LEVEL          Nomad agents' log level (default INFO)
#   FERRY_TIMEOUT            seconds to wait for each readiness step (default 120)
#   FERRY_NOMAD_BIN, FERRY_CONSUL_BIN, FERRY_REGISTRY_BIN, FERRY_RUNC_BIN
#   FERRY_COMPANION_BIN      ferry-companion binary (default <repo>/bin/ferry-companion)
#   FERRY_CHECKPOINT_DIR     a checkpoint_dir every client shares (default: none, checkpoints are served)
#   FERRY_PLATFORM_C<K>      platform client K chooses images for, e.g. linux/arm64
#   FERRY_COMPANION_CONFIG   HCL file with the companion's configuration (default:
#                            none, the shipped defaults); read by `up` and `companion`
# `up` writes these into the clients' configs; `restart-client K` applies them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NOMAD_BIN=${FERRY_NOMAD_BIN:-/usr/local/bin/nomad}
CONSUL_BIN=${FERRY_CONSUL_BIN:-/usr/local/bin/consul}
REGISTRY_BIN=${FERRY_REGISTRY_BIN:-/usr/bin/docker-registry}
RUNC_BIN=${FERRY_RUNC_BIN:-/usr/local/bin/runc}
DRIVER_BIN=${FERRY_DRIVER_BIN:-$REPO/bin/nomad-driver-ferry}
COMPANION_BIN=${FERRY_COMPANION_BIN:-$REPO/bin/ferry-companion}
SKIP_DRIVER_CHECK=${FERRY_SKIP_DRIVER_CHECK:-0}
LOG_LEVEL=${FERRY_LOG_LEVEL:-INFO}
TIMEOUT=${FERRY_TIMEOUT:-120}

DATA=/var/lib/ferry-dev
# Runtime state (pids, the drivers' state_dir) on a tmpfs, as /run is on
# most hosts: the checkpoints of moves in flight are written there.
RUN=/run/ferry-dev
if [[ $(stat -f -c %T /run 2>/dev/null) != tmpfs ]]; then RUN=/dev/shm/ferry-dev; fi
LOGS=/var/log/ferry-dev
PIDS=$RUN/pids
ETC=$DATA/etc
TLS=$DATA/tls
PLUGINS=$DATA/plugins
NETNS_DIR=/var/run/netns

HUB_NS=ferry-hub
BRIDGE=ferry0
NET=10.97.0
HUB_IP=$NET.1
# The drivers' transfer listener on each client's address.
TRANSFER_PORT=4701
DEFAULT_CLIENTS=2
MAX_CLIENTS=50

# Root-namespace loopback forwarders to the hub: the same port on both sides.
FORWARD_PORTS=(4646 8500 5000)
NOMAD_API=http://127.0.0.1:4646
CONSUL_API=http://127.0.0.1:8500
REGISTRY_PUSH=127.0.0.1:5000
REGISTRY=$HUB_IP:5000

FINGERPRINT_DENYLIST=env_aws,env_gce,env_azure,env_digitalocean

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

require_root() { ((EUID == 0)) || die "must run as root"; }

client_name() { echo "ferry-c$1"; }
client_ns() { echo "ferry-c$1"; }
client_ip() { echo "$NET.$((10 + $1))"; }
# Loopback port forwarded to client K's HTTP API: 4746, 4846, ...
client_http_port() { echo $((4646 + 100 * $1)); }

# ---------------------------------------------------------------------------
# processes

# proc_start_time PID: the process start time (field 22 of /proc/PID/stat);
# fails if PID is gone or a zombie.
proc_start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  [[ $1 != Z ]] || return 1
  echo "${20}"
}

pid_alive() { proc_start_time "$1" >/dev/null; }

# running NAME: prints the pid of the daemon NAME if it is alive.
running() {
  local f=$PIDS/$1.pid pid start now
  [[ -f $f ]] || return 1
  read -r pid start <"$f" || return 1
  [[ -n ${pid:-} ]] || return 1
  now=$(proc_start_time "$pid") || return 1
  [[ $now == "$start" ]] || return 1
  echo "$pid"
}

# start_daemon NAME CMD...: start CMD in a new session, logging to NAME.log.
start_daemon() {
  local name=$1 logf=$LOGS/$1.log pid start
  shift
  printf '\n===== %s starting: %s\n' "$(date -Is)" "$*" >>"$logf"
  setsid "$@" </dev/null >>"$logf" 2>&1 &
  pid=$!
  start=$(proc_start_time "$pid") || {
    tail_log "$name"
    die "$name exited immediately"
  }
  echo "$pid $start" >"$PIDS/$name.pid"
  log "started $name (pid $pid, log $logf)"
}

# wait_gone PID SECONDS: wait for PID to exit; fails on timeout.
wait_gone() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# stop_daemon NAME [SECONDS] [group|leader]: SIGTERM, wait, then SIGKILL.
# "group" signals the whole process group (the daemon is a session leader, so
# its pgid is its pid); "leader" only the daemon itself, leaving whatever it
# started alone.
stop_daemon() {
  local name=$1 secs=${2:-20} scope=${3:-group} pid target
  if pid=$(running "$name"); then
    target=$pid
    [[ $scope == group ]] && target=-$pid
    log "stopping $name (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    if ! wait_gone "$pid" "$secs"; then
      warn "$name did not exit within ${secs}s, killing it"
      kill -KILL -- "$target" 2>/dev/null || true
      wait_gone "$pid" 5 || warn "$name (pid $pid) is still alive"
    fi
    # Stragglers left in the process group (plugins of a killed agent).
    if [[ $scope == group ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PIDS/$name.pid"
}

tail_log() {
  local f=$LOGS/$1.log
  [[ -f $f ]] || return 0
  printf -- '----- last lines of %s -----\n' "$f" >&2
  tail -n "${2:-30}" "$f" >&2
  printf -- '-----\n' >&2
}

# kill_pids SECONDS PID...: SIGTERM, wait up to SECONDS, SIGKILL the rest.
kill_pids() {
  local secs=$1 pid i
  local -a left=()
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    left=()
    for pid in "$@"; do if pid_alive "$pid"; then left+=("$pid"); fi; done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  for pid in "${left[@]}"; do wait_gone "$pid" 5 || warn "pid $pid survived SIGKILL"; done
}

# pids_in_netns NS: pids of all processes whose network namespace is NS.
pids_in_netns() {
  local ino link p
  ino=$(stat -L -c %i "$NETNS_DIR/$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    link=$(readlink "$p/ns/net" 2>/dev/null) || continue
    [[ $link == "net:[$ino]" ]] && echo "${p#/proc/}"
  done
  return 0
}

# pids_with_cmdline PATTERN: pids whose command line (blank-separated) matches
# the glob PATTERN.
pids_with_cmdline() {
  local p cmd
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} != "$$" ]] || continue
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    # shellcheck disable=SC2053
    [[ $cmd == $1 ]] && echo "${p#/proc/}"
  done
  return 0
}

# The per-task shims of this cluster's driver instances: they are not
# children of the Nomad clients, so they outlive them. A shim that leads its
# own process group brings the group along (runc or CRIU it is running).
shim_pids() {
  local -a shims=()
  mapfile -t shims < <(pids_with_cmdline "*nomad-driver-ferry shim $RUN/*")
  ((${#shims[@]})) || return 0
  ps -eo pid=,pgid= | awk -v s=" ${shims[*]} " '
    index(s, " " $1 " ") || ($1 != $2 && index(s, " " $2 " ")) {print $1}'
}

# This cluster's loopback forwarders (also ones whose pid file is gone).
forwarder_pids() { pids_with_cmdline "socat TCP-LISTEN:*nsenter --net=$NETNS_DIR/ferry-*"; }

# ---------------------------------------------------------------------------
# network

ns_exists() { [[ -e $NETNS_DIR/$1 ]] && ip netns list | awk '{print $1}' | grep -qx "$1"; }

ensure_ns() {
  ns_exists "$1" || ip netns add "$1"
  ip -n "$1" link set lo up
}

setup_hub_net() {
  ensure_ns "$HUB_NS"
  if ! ip -n "$HUB_NS" link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($HUB_IP/24) in namespace $HUB_NS"
    ip -n "$HUB_NS" link add "$BRIDGE" type bridge
  fi
  ip -n "$HUB_NS" addr replace "$HUB_IP/24" dev "$BRIDGE"
  ip -n "$HUB_NS" link set "$BRIDGE" up
}

setup_client_net() {
  local k=$1 ns ip port
  ns=$(client_ns "$k") ip=$(client_ip "$k")
  port=$ns # the hub-side end of the veth is named after the client
  ensure_ns "$ns"
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    log "creating namespace $ns with eth0 $ip/24 on $BRIDGE"
    ip -n "$HUB_NS" link del "$port" >/dev/null 2>&1 || true
    # Created inside the hub, so the pair never appears in the root namespace.
    ip -n "$HUB_NS" link add "$port" type veth peer name eth0 netns "$ns"
  fi
  ip -n "$HUB_NS" link set "$port" master "$BRIDGE" up
  ip -n "$ns" addr replace "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$HUB_IP" dev eth0
}

# ---------------------------------------------------------------------------
# configuration

# write_if_changed FILE: write stdin to FILE unless FILE already has it;
# CHANGED tells which (an agent already running needs a restart to see it).
CHANGED=0
write_if_changed() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1" 2>/dev/null; then
    rm -f "$tmp"
    CHANGED=0
  else
    mv -f "$tmp" "$1"
    CHANGED=1
  fi
}

write_server_config() {
  write_if_changed "$ETC/server.hcl" <<EOF
# Generated by scripts/cluster.sh
name                 = "ferry-server"
data_dir             = "$DATA/server"
bind_addr            = "$HUB_IP"
log_level            = "$LOG_LEVEL"
disable_update_check = true

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = false
}

consul {
  address = "$HUB_IP:8500"
}
EOF
}

write_registry_config() {
  write_if_changed "$ETC/registry.yml" <<EOF
# Generated by scripts/cluster.sh
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $DATA/registry
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $HUB_IP:5000
EOF
}

# client_config K WITH_PLUGIN(0|1): the agent config of client K.
client_config() {
  local k=$1 with_plugin=$2 name ip
  name=$(client_name "$k") ip=$(client_ip "$k")
  {
    cat <<EOF
# Generated by scripts/cluster.sh
name                 = "$name"
data_dir             = "$DATA/c$k"
bind_addr            = "$ip"
plugin_dir           = "$PLUGINS"
log_level            = "$LOG_LEVEL"
disable_update_check = true

# The root namespace has no route to $ip, so the HTTP address this client
# advertises (the node's HTTPAddr, which the CLI and API client try first for
# alloc logs/fs/exec) is a loopback forwarder into its namespace. Consul's
# health check of the agent still uses bind_addr.
advertise {
  http = "127.0.0.1:$(client_http_port "$k")"
}

# The companion measures allocations through the client's stats API, which
# Nomad only collects with publish_allocation_metrics.
telemetry {
  publish_allocation_metrics = true
  collection_interval        = "1s"
}

client {
  enabled           = true
  servers           = ["$HUB_IP:4647"]
  network_interface = "eth0"
  cni_path          = "/usr/lib/cni"

  # One parent per client so that clients sharing a host keep apart. Nomad
  # v1.11.3 accepts this option but does not apply it: its own cgroup tree
  # stays /nomad (cgroup v1) for every client. Task cgroups are named per
  # allocation, so the clients still do not collide.
  cgroup_parent = "/ferry-dev-c$k"

  options {
    "fingerprint.denylist" = "$FINGERPRINT_DENYLIST"
    "driver.denylist"      = "docker,java,qemu"
  }

  meta {
    "ferry.dev" = "true"
  }
}

consul {
  address = "$HUB_IP:8500"
}
EOF
    if ((with_plugin)); then
      cat <<EOF

plugin "nomad-driver-ferry" {
  config {
    data_dir            = "$DATA/c$k/ferry"
    state_dir           = "$RUN/c$k"
$(checkpoint_dir_line)
$(platform_line "$k")
    insecure_registries = ["$REGISTRY"]
    gc {
      image       = true
      image_delay = "2m"
    }
    # 127.0.0.1 in this namespace reaches neither this client's agent (it
    # binds $ip) nor Consul, so the API clients' defaults would not do. The
    # driver asks its own agent which node it is.
    nomad {
      address = "http://$ip:4646"
    }
    consul {
      address = "$HUB_IP:8500"
    }
    # Checkpoints move between the clients' drivers over mutual TLS, with
    # certificates from the cluster's CA (made by \`nomad tls\`).
    transfer {
      listen    = "$ip:$TRANSFER_PORT"
      ca_file   = "$TLS/nomad-agent-ca.pem"
      cert_file = "$TLS/c$k/global-client-nomad.pem"
      key_file  = "$TLS/c$k/global-client-nomad-key.pem"
    }
  }
}

# ferry-companion runs as a raw_exec system job (jobspecs/companion.nomad.hcl).
plugin "raw_exec" {
  config {
    enabled = true
  }
}
EOF
    fi
  }
}

# checkpoint_dir_line: with FERRY_CHECKPOINT_DIR set, every client writes
# its checkpoints there (storage all clients share) instead of serving them.
checkpoint_dir_line() {
  if [[ -n ${FERRY_CHECKPOINT_DIR:-} ]]; then
    printf '    checkpoint_dir      = "%s"\n' "$FERRY_CHECKPOINT_DIR"
  fi
}

# platform_line K: with FERRY_PLATFORM_C<K> set (e.g. linux/arm64), client K
# chooses images for that platform, as a node of that architecture would.
platform_line() {
  local var="FERRY_PLATFORM_C$1"
  if [[ -n ${!var:-} ]]; then
    printf '    platform            = "%s"\n' "${!var}"
  fi
}

# ensure_tls K: the cluster's CA, made once, and client K's certificate,
# naming its address, made with Nomad's own `nomad tls` as an operator
# would for Nomad's mTLS.
ensure_tls() {
  local k=$1 dir
  mkdir -p "$TLS"
  if [[ ! -s $TLS/nomad-agent-ca.pem ]]; then
    log "creating the cluster's CA in $TLS"
    (cd "$TLS" && umask 077 && "$NOMAD_BIN" tls ca create >/dev/null)
  fi
  dir=$TLS/c$k
  if [[ ! -s $dir/global-client-nomad.pem ]]; then
    mkdir -p "$dir"
    (cd "$dir" && umask 077 && "$NOMAD_BIN" tls cert create -client -ca ../nomad-agent-ca.pem \
      -key ../nomad-agent-ca-key.pem -additional-ipaddress "$(client_ip "$k")" >/dev/null)
  fi
}

# companion_config: the companion's configuration file contents, if any.
companion_config() {
  if [[ -n ${FERRY_COMPANION_CONFIG:-} ]]; then
    cat "$FERRY_COMPANION_CONFIG"
  fi
}

# run_companion: install ferry-companion where the clients run it from, and
# (re)submit its system job.
run_companion() {
  [[ -x $COMPANION_BIN ]] || die "$COMPANION_BIN not found: run 'make build' first"
  install -m 0755 "$COMPANION_BIN" "$DATA/bin/ferry-companion.new"
  mv -f "$DATA/bin/ferry-companion.new" "$DATA/bin/ferry-companion"
  log "running the ferry-companion system job"
  NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" job run -detach \
    -var "binary=$DATA/bin/ferry-companion" \
    -var "consul=$HUB_IP:8500" \
    -var "build=$(sha256sum "$DATA/bin/ferry-companion" | cut -c1-16)" \
    -var "config=$(companion_config)" \
    "$REPO/jobspecs/companion.nomad.hcl" >/dev/null
  # Wait for the submitted version everywhere, and for the allocations it
  # replaces to be gone: a client still running a replaced allocation holds
  # its static port, and Nomad then places nothing else on that node.
  local deadline=$((SECONDS + TIMEOUT)) want have version
  want=$(running_clients | wc -l)
  while :; do
    version=$(curl -sf -m 3 "$NOMAD_API/v1/job/ferry-companion" 2>/dev/null | jq '.Version' 2>/dev/null || echo -1)
    have=$(curl -sf -m 3 "$NOMAD_API/v1/job/ferry-companion/allocations" 2>/dev/null |
      jq --argjson v "$version" '
        if any(.[]; .DesiredStatus != "run" and (.ClientStatus == "running" or .ClientStatus == "pending")) then 0
        else [.[] | select(.ClientStatus == "running" and .DesiredStatus == "run" and .JobVersion == $v)] | length end' 2>/dev/null || echo 0)
    ((have >= want)) && break
    ((SECONDS < deadline)) || die "ferry-companion version $version is running on $have of $want clients; see 'nomad job status ferry-companion'"
    sleep 1
  done
}

write_client_config() { write_if_changed "$ETC/c$1.hcl" < <(client_config "$@"); }

# is_nomad_plugin BIN: go-plugin binaries started without their handshake
# cookie print this notice and exit.
is_nomad_plugin() {
  env -u NOMAD_PLUGIN_MAGIC_COOKIE timeout 10 "$1" </dev/null 2>&1 |
    grep -q 'This binary is a plugin'
}

# install_driver: copy the driver into the shared plugin_dir (atomically, so
# running agents and shims keep their old inode). Sets WITH_PLUGIN.
WITH_PLUGIN=1
install_driver() {
  [[ -x $DRIVER_BIN ]] || die "$DRIVER_BIN not found: run 'make build' first"
  if [[ $SKIP_DRIVER_CHECK == 1 ]] && ! is_nomad_plugin "$DRIVER_BIN"; then
    warn "$DRIVER_BIN is not a Nomad plugin (placeholder build?); starting clients without the ferry driver"
    WITH_PLUGIN=0
    rm -f "$PLUGINS/nomad-driver-ferry"
    return 0
  fi
  copy_driver "clients already running load it on restart-client"
}

# copy_driver NOTE: install DRIVER_BIN as the plugin if it differs.
copy_driver() {
  if ! cmp -s "$DRIVER_BIN" "$PLUGINS/nomad-driver-ferry"; then
    install -m 0755 "$DRIVER_BIN" "$DATA/.nomad-driver-ferry.new"
    mv -f "$DATA/.nomad-driver-ferry.new" "$PLUGINS/nomad-driver-ferry"
    log "installed $DRIVER_BIN into $PLUGINS ($1)"
  fi
}

# ---------------------------------------------------------------------------
# services

check_tools() {
  local t
  for t in "$NOMAD_BIN" "$CONSUL_BIN" "$REGISTRY_BIN" socat nsenter setsid ip ss curl jq; do
    command -v "$t" >/dev/null || die "$t not found (run scripts/deps.sh)"
  done
  [[ -d /usr/lib/cni ]] || die "/usr/lib/cni missing (containernetworking-plugins; run scripts/deps.sh)"
}

# port_owner PORT: what listens on 127.0.0.1:PORT (or a wildcard), if anything.
port_owner() {
  ss -Hltnp "( sport = :$1 )" 2>/dev/null |
    awk '$4 ~ /^(127\.0\.0\.1|0\.0\.0\.0|\*|\[::\]|\[::ffff:127\.0\.0\.1\]):/ {print $4, $6}' | head -1
}

# start_forwarder NAME PORT NS ADDR: listen on 127.0.0.1:PORT in the root
# namespace, relaying each connection to ADDR (ip:port) inside namespace NS.
start_forwarder() {
  local name=$1 port=$2 ns=$3 target=$4 owner
  running "$name" >/dev/null && return 0
  owner=$(port_owner "$port")
  [[ -z $owner ]] || die "127.0.0.1:$port is already taken ($owner); stop that service first"
  start_daemon "$name" socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
    "EXEC:nsenter --net=$NETNS_DIR/$ns socat STDIO TCP\\:${target//:/\\:}"
}

start_hub_forwarders() {
  local port
  for port in "${FORWARD_PORTS[@]}"; do
    start_forwarder "fwd-$port" "$port" "$HUB_NS" "$HUB_IP:$port"
  done
}

start_client_forwarder() {
  start_forwarder "fwd-c$1" "$(client_http_port "$1")" "$(client_ns "$1")" "$(client_ip "$1"):4646"
}

start_consul() {
  running consul >/dev/null && return 0
  start_daemon consul nsenter --net="$NETNS_DIR/$HUB_NS" "$CONSUL_BIN" agent -dev \
    -node=ferry-hub -bind="$HUB_IP" -client="$HUB_IP" -hcl='disable_update_check = true'
}

start_server() {
  running nomad-server >/dev/null && return 0
  start_daemon nomad-server nsenter --net="$NETNS_DIR/$HUB_NS" "$NOMAD_BIN" agent -config="$ETC/server.hcl"
}

start_registry() {
  running registry >/dev/null && return 0
  mkdir -p "$DATA/registry"
  start_daemon registry nsenter --net="$NETNS_DIR/$HUB_NS" "$REGISTRY_BIN" serve "$ETC/registry.yml"
}

start_client() {
  local k=$1 name
  name=$(client_name "$k")
  running "$name" >/dev/null && return 0
  mkdir -p "$DATA/c$k" "$RUN/c$k"
  start_daemon "$name" nsenter --net="$NETNS_DIR/$(client_ns "$k")" "$NOMAD_BIN" agent -config="$ETC/c$k.hcl"
}

# ---------------------------------------------------------------------------
# readiness

# wait_until DESC NAME CHECK...: poll CHECK every second for TIMEOUT seconds
# while daemon NAME stays alive; on failure show NAME's log and exit.
wait_until() {
  local desc=$1 name=$2 deadline
  shift 2
  deadline=$((SECONDS + TIMEOUT))
  log "waiting for $desc"
  until "$@"; do
    if ! running "$name" >/dev/null; then
      tail_log "$name" 40
      die "$name exited while waiting for $desc (log: $LOGS/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail_log "$name" 40
      die "timed out after ${TIMEOUT}s waiting for $desc (log: $LOGS/$name.log)"
    fi
    sleep 1
  done
}

consul_ready() { [[ $(curl -sf -m 3 "$CONSUL_API/v1/status/leader" 2>/dev/null) == *:* ]]; }
nomad_ready() { [[ $(curl -sf -m 3 "$NOMAD_API/v1/status/leader" 2>/dev/null) == *:* ]]; }
registry_ready() { curl -sf -m 3 "http://$REGISTRY_PUSH/v2/" >/dev/null 2>&1; }

node_id() { cat "$DATA/c$1/client/client-id" 2>/dev/null; }

# node_info K: "status<TAB>detected<TAB>healthy<TAB>description<TAB>updated"
# of client K's node and its ferry driver, as the server sees them.
node_info() {
  local id
  id=$(node_id "$1") || return 1
  curl -sf -m 3 "$NOMAD_API/v1/node/$id" 2>/dev/null | jq -r '[.Status,
      (.Drivers.ferry.Detected // false), (.Drivers.ferry.Healthy // false),
      (.Drivers.ferry.HealthDescription // ""), (.Drivers.ferry.UpdateTime // "")] | @tsv'
}

# Driver UpdateTime per client, recorded before (re)starting it, so that the
# state left by the previous process is not taken for the new one's.
declare -A DRIVER_SEEN=()

record_driver_seen() {
  local info updated=""
  if info=$(node_info "$1" 2>/dev/null); then
    IFS=$'\t' read -r _ _ _ _ updated <<<"$info"
  fi
  DRIVER_SEEN[$1]=$updated
}

client_ready() {
  local k=$1 info status detected updated
  # The agent itself answers (through its loopback forwarder) and knows a server...
  curl -sf -m 3 "http://127.0.0.1:$(client_http_port "$k")/v1/agent/health?type=client" >/dev/null 2>&1 || return 1
  # ...and the server has its node ready, with the ferry driver detected.
  info=$(node_info "$k") || return 1
  IFS=$'\t' read -r status detected _ _ updated <<<"$info"
  [[ $status == ready ]] || return 1
  [[ $SKIP_DRIVER_CHECK == 1 ]] && return 0
  [[ $detected == true ]] || return 1
  [[ -z ${DRIVER_SEEN[$k]:-} || $updated != "${DRIVER_SEEN[$k]}" ]]
}

wait_client() {
  local k=$1 name info deadline status detected healthy desc
  name=$(client_name "$k")
  deadline=$((SECONDS + TIMEOUT))
  log "waiting for client $name to be ready$([[ $SKIP_DRIVER_CHECK == 1 ]] || echo ' with the ferry driver detected')"
  until client_ready "$k"; do
    if ! running "$name" >/dev/null; then
      tail_log "$name" 40
      if grep -q 'failed to fingerprint plugins' "$LOGS/$name.log" 2>/dev/null; then
        warn "Nomad could not load $PLUGINS/nomad-driver-ferry; is $DRIVER_BIN a working driver build?"
      fi
      die "$name exited while starting (log: $LOGS/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail_log "$name" 40
      info=$(node_info "$k" || true)
      if [[ -n $info ]]; then
        IFS=$'\t' read -r status detected healthy desc _ <<<"$info"
        log "node $name: status=$status ferry Detected=$detected Healthy=$healthy"
        log "ferry driver health: ${desc:-<none>}"
      else
        log "node $name has not registered with the server"
      fi
      die "timed out after ${TIMEOUT}s waiting for $name (log: $LOGS/$name.log)"
    fi
    sleep 1
  done
  if [[ $SKIP_DRIVER_CHECK != 1 ]]; then
    IFS=$'\t' read -r _ _ healthy desc _ <<<"$(node_info "$k")"
    [[ $healthy == true ]] || warn "$name: the ferry driver is detected but unhealthy: $desc"
  fi
}

# Numbers of the clients that have a live pid file.
running_clients() {
  local f k
  for f in "$PIDS"/ferry-c*.pid; do
    [[ -e $f ]] || continue
    k=${f##*/ferry-c}
    k=${k%.pid}
    if running "ferry-c$k" >/dev/null; then echo "$k"; fi
  done
  return 0
}

# Numbers of the clients that have a config (were started at some point).
configured_clients() {
  local f k
  for f in "$ETC"/c*.hcl; do
    [[ -e $f ]] || continue
    k=${f##*/c}
    echo "${k%.hcl}"
  done | sort -n
}

# purge_stale_nodes: deregister ferry-cK nodes whose client is not running
# but which the server still counts as up. After a server restart Nomad
# waits several minutes for a node's heartbeat before marking it down, and
# would meanwhile place allocations on, say, client 3 of an earlier
# `up --clients 3`. A purged client registers again when it is next started.
purge_stale_nodes() {
  local k id name status
  local -A live=()
  while read -r k; do
    id=$(node_id "$k") && live[$id]=1
  done < <(running_clients)
  while IFS=$'\t' read -r id name status; do
    [[ $name =~ ^ferry-c[0-9]+$ && $status != down && -z ${live[$id]:-} ]] || continue
    log "purging node $name ($id) from the server: its client is not running"
    curl -sf -m 10 -X PUT "$NOMAD_API/v1/node/$id/purge" >/dev/null || warn "could not purge node $name"
  done < <(curl -sf -m 5 "$NOMAD_API/v1/nodes" | jq -r '.[] | [.ID, .Name, .Status] | @tsv')
}

# ---------------------------------------------------------------------------
# commands

cmd_up() {
  local n=$DEFAULT_CLIENTS k
  while (($#)); do
    case $1 in
      --clients)
        (($# >= 2)) || die "--clients needs a number"
        n=$2
        shift 2
        ;;
      --clients=*) n=${1#*=}; shift ;;
      *) die "up: unknown argument $1" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ ]] || die "--clients must be a number"
  n=$((10#$n))
  ((n >= 1 && n <= MAX_CLIENTS)) || die "--clients must be 1..$MAX_CLIENTS"
  require_root
  check_tools
  mkdir -p "$DATA" "$DATA/bin" "$ETC" "$PLUGINS" "$RUN" "$PIDS" "$LOGS"
  install_driver

  log "hub namespace $HUB_NS"
  setup_hub_net
  write_server_config
  if ((CHANGED)) && running nomad-server >/dev/null; then
    warn "the Nomad server config changed; it applies after '$0 down' and 'up'"
  fi
  write_registry_config
  if ((CHANGED)) && running registry >/dev/null; then
    warn "the registry config changed; it applies after '$0 down' and 'up'"
  fi
  start_hub_forwarders
  start_consul
  wait_until "Consul at $CONSUL_API" consul consul_ready
  start_server
  start_registry
  wait_until "the Nomad server to elect itself leader ($NOMAD_API)" nomad-server nomad_ready
  wait_until "the registry at http://$REGISTRY_PUSH/v2/" registry registry_ready

  # Clients 1..N, plus any already running beyond N (left alone).
  local -a clients=()
  mapfile -t clients < <({ seq 1 "$n"; running_clients; } | sort -nu)
  for k in "${clients[@]}"; do
    if ((k > n)); then
      log "client $(client_name "$k") is running beyond the $n requested; leaving it"
      start_client_forwarder "$k"
      continue
    fi
    setup_client_net "$k"
    ensure_tls "$k"
    write_client_config "$k" "$WITH_PLUGIN"
    start_client_forwarder "$k"
    if ! running "$(client_name "$k")" >/dev/null; then
      record_driver_seen "$k"
      start_client "$k"
    elif ((CHANGED)); then
      warn "the config of running client $(client_name "$k") changed; '$0 restart-client $k' applies it"
    fi
  done
  for k in "${clients[@]}"; do wait_client "$k"; done
  purge_stale_nodes
  if ((WITH_PLUGIN)); then
    run_companion
  fi

  log "cluster is up with ${#clients[@]} client(s): NOMAD_ADDR=$NOMAD_API, registry $REGISTRY (push to $REGISTRY_PUSH)"
  log "eval \"\$($0 env)\" to use it"
}

cmd_env() {
  cat <<EOF
export NOMAD_ADDR=$NOMAD_API
export CONSUL_HTTP_ADDR=${CONSUL_API#http://}
export FERRY_REGISTRY=$REGISTRY
export FERRY_REGISTRY_PUSH=$REGISTRY_PUSH
export FERRY_TLS=$TLS
export FERRY_RUN=$RUN
EOF
}

cmd_restart_client() {
  local k=${1:-} name
  [[ $k =~ ^[0-9]+$ ]] || die "usage: $0 restart-client K"
  require_root
  name=$(client_name "$k")
  [[ -f $ETC/c$k.hcl ]] || die "client $name was never started (no $ETC/c$k.hcl)"
  running nomad-server >/dev/null || die "the Nomad server is not running; use '$0 up'"
  ns_exists "$(client_ns "$k")" || die "namespace $(client_ns "$k") is missing; use '$0 up'"
  # Same config; a rebuilt driver binary is picked up (all clients load it on
  # their next start).
  if grep -q '^plugin "nomad-driver-ferry"' "$ETC/c$k.hcl" && [[ -x $DRIVER_BIN ]] &&
    { [[ $SKIP_DRIVER_CHECK != 1 ]] || is_nomad_plugin "$DRIVER_BIN"; }; then
    copy_driver "other running clients load it on their restart"
  fi
  start_client_forwarder "$k"
  record_driver_seen "$k"
  # SIGTERM to the agent only, no drain: the client leaves its tasks (and
  # their shims and log collectors) running, for task recovery to find them.
  stop_daemon "$name" 60 leader
  # A driver plugin whose agent had to be killed is left behind; shims are not
  # touched (their command line goes on with "shim ...").
  local -a pids=()
  mapfile -t pids < <(comm -12 <(pids_with_cmdline "$PLUGINS/nomad-driver-ferry " | sort) \
    <(pids_in_netns "$(client_ns "$k")" | sort))
  stop_pids "orphaned driver plugin process(es) of $name" 5 "${pids[@]}"
  start_client "$k"
  wait_client "$k"
  log "client $name restarted"
}

cmd_status() {
  local name pid k ns info st det hl
  for name in consul nomad-server registry "${FORWARD_PORTS[@]/#/fwd-}"; do
    if pid=$(running "$name"); then
      printf '%-13s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-13s stopped\n' "$name"
    fi
  done
  while read -r k; do
    [[ -n $k ]] || continue
    name=$(client_name "$k")
    if pid=$(running "$name"); then
      info=$(node_info "$k" 2>/dev/null || true)
      IFS=$'\t' read -r st det hl _ _ <<<"${info:-?}"
      printf '%-13s running (pid %s, %s, http 127.0.0.1:%s%s): node %s, ferry detected=%s healthy=%s\n' \
        "$name" "$pid" "$(client_ip "$k")" "$(client_http_port "$k")" \
        "$(running "fwd-c$k" >/dev/null || echo ' NOT FORWARDED')" "${st:-?}" "${det:-?}" "${hl:-?}"
    else
      printf '%-13s stopped\n' "$name"
    fi
  done < <(configured_clients)
  ns=$(ip netns list 2>/dev/null | awk '$1 ~ /^ferry-/ {print $1}' | sort | tr '\n' ' ')
  printf '%-13s %s\n' namespaces "${ns:-none}"
  if registry_ready; then
    printf '%-13s %s\n' registry "http://$REGISTRY_PUSH/v2/ answers (jobs use $REGISTRY)"
  fi
}

# delete_containers: force-delete every runc container of the cluster's clients.
delete_containers() {
  local root id
  command -v "$RUNC_BIN" >/dev/null || return 0
  for root in "$RUN"/c*/runc; do
    [[ -d $root ]] || continue
    while read -r id; do
      [[ -n $id ]] || continue
      log "deleting container $id ($root)"
      "$RUNC_BIN" --root "$root" delete --force "$id" || warn "runc delete $id failed"
    done < <("$RUNC_BIN" --root "$root" list -q 2>/dev/null || true)
  done
}

# alloc_netns NS: named namespaces (Nomad allocation networks) with a veth
# into NS.
alloc_netns() {
  ip -n "$1" netns list-id 2>/dev/null |
    sed -n 's/.*iproute2 netns name: \([^)]*\)).*/\1/p' | grep -v '^ferry-' || true
}

# release_cni_addresses: drop the host-local IPAM reservations (Nomad's
# bridge network keeps them in /var/run/cni/nomad, shared by all clients on
# the host) of this cluster's allocations. Removing a client's namespace skips
# the CNI DEL that would release them, and a client restoring an allocation
# later would be refused a "duplicate allocation".
CNI_IPAM_DIR=/var/run/cni/nomad
release_cni_addresses() {
  local d f id n=0
  local -A ours=()
  [[ -d $CNI_IPAM_DIR ]] || return 0
  for d in "$DATA"/c*/alloc/*/; do
    [[ -d $d ]] || continue
    d=${d%/}
    ours[${d##*/}]=1
  done
  for id in "$@"; do ours[$id]=1; done
  ((${#ours[@]})) || return 0
  for f in "$CNI_IPAM_DIR"/*; do
    [[ -f $f ]] || continue
    case ${f##*/} in last_reserved_ip.* | lock) continue ;; esac
    id=$(head -n 1 "$f" 2>/dev/null) || continue
    id=${id%$'\r'} # host-local ends lines with CRLF
    if [[ -n $id && -n ${ours[$id]:-} ]]; then
      rm -f "$f"
      n=$((n + 1))
    fi
  done
  ((n == 0)) || log "released $n CNI address reservation(s) of allocations in $CNI_IPAM_DIR"
}

# umount_under DIR: unmount everything mounted at or below DIR, deepest first.
umount_under() {
  local mp
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo |
    awk '{print length, $0}' | sort -rn | cut -d' ' -f2- |
    while read -r mp; do
      mp=$(printf '%b' "$mp") # mountinfo escapes blanks as \040
      umount -l "$mp" 2>/dev/null || warn "could not unmount $mp"
    done
}

stop_pids() { # stop_pids WHAT SECONDS PID...
  local what=$1 secs=$2
  shift 2
  (($#)) || return 0
  log "stopping $# $what"
  kill_pids "$secs" "$@"
}

cmd_down() {
  local purge=0 name ns f d
  local -a pids=() client_nss=()
  while (($#)); do
    case $1 in
      --purge) purge=1; shift ;;
      *) die "down: unknown argument $1" ;;
    esac
  done
  require_root

  # Clients first, so nothing restarts the tasks removed below.
  for f in "$PIDS"/ferry-c*.pid; do
    [[ -e $f ]] || continue
    name=${f##*/}
    stop_daemon "${name%.pid}" 30 group
  done
  delete_containers
  mapfile -t pids < <(shim_pids)
  stop_pids "leftover shim process(es)" 10 "${pids[@]}"

  # Anything else still living in a client namespace: task log collectors,
  # executors, plugins of a killed agent.
  mapfile -t client_nss < <(ip netns list 2>/dev/null | awk '$1 ~ /^ferry-c[0-9]+$/ {print $1}')
  for ns in "${client_nss[@]}"; do
    mapfile -t pids < <(pids_in_netns "$ns")
    stop_pids "leftover process(es) in $ns" 10 "${pids[@]}"
  done

  stop_daemon registry 20
  stop_daemon nomad-server 30
  stop_daemon consul 20
  for f in "$PIDS"/fwd-*.pid; do
    [[ -e $f ]] || continue
    name=${f##*/}
    stop_daemon "${name%.pid}" 5
  done
  mapfile -t pids < <(forwarder_pids)
  stop_pids "leftover forwarder(s)" 5 "${pids[@]}"
  if ns_exists "$HUB_NS"; then
    mapfile -t pids < <(pids_in_netns "$HUB_NS")
    stop_pids "leftover process(es) in $HUB_NS" 10 "${pids[@]}"
  fi

  # Removing a namespace removes its interfaces (veths, bridges) and its
  # iptables rules.
  local -a allocs=()
  for ns in "${client_nss[@]}"; do
    while read -r d; do
      [[ -n $d ]] || continue
      log "removing allocation network namespace $d (attached to $ns)"
      ip netns del "$d" 2>/dev/null || warn "could not remove namespace $d"
      allocs+=("$d")
    done < <(alloc_netns "$ns")
    log "removing namespace $ns"
    ip netns del "$ns" || warn "could not remove namespace $ns"
  done
  release_cni_addresses "${allocs[@]}"
  if ns_exists "$HUB_NS"; then
    log "removing namespace $HUB_NS (bridge $BRIDGE)"
    ip netns del "$HUB_NS" || warn "could not remove namespace $HUB_NS"
  fi
  rm -f "$PIDS"/*.pid

  if ((purge)); then
    for d in "$DATA" "$RUN"; do
      [[ -d $d ]] || continue
      umount_under "$d"
      log "removing $d"
      # --one-file-system: never descend into anything still mounted below.
      rm -rf --one-file-system "$d" || warn "could not remove all of $d"
    done
  fi
  log "cluster is down"
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    restart-client) cmd_restart_client "$@" ;;
    companion) require_root && run_companion ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
