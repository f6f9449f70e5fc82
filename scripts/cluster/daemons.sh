# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: starting the loopback
# forwarders, Consul, the Nomad server, the registry and the Nomad clients.

# check_tools: the programs `up` needs.
# LAZY_PIPE_SIZE: the fs.pipe-max-size CRIU's lazy page transfer needs
# without CAP_SYS_RESOURCE (its pipes of 819 pages, rounded up to 4 MiB).
LAZY_PIPE_SIZE=4194304

# tune_host: let the clients' drivers migrate lazily (their fingerprint's
# driver.ferry.checkpoint.lazy): raise fs.pipe-max-size to LAZY_PIPE_SIZE
# when it is lower. It is the host's setting, left raised by down.
tune_host() {
  local cur
  cur=$(</proc/sys/fs/pipe-max-size)
  if ((cur < LAZY_PIPE_SIZE)); then
    echo "$LAZY_PIPE_SIZE" >/proc/sys/fs/pipe-max-size
    log "raised fs.pipe-max-size from $cur to $LAZY_PIPE_SIZE (lazy migration's page transfer)"
  fi
}

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

# start_hub_forwarders: 4646, 8500 and 5000 on loopback to the hub.
start_hub_forwarders() {
  local port
  for port in "${FORWARD_PORTS[@]}"; do
    start_forwarder "fwd-$port" "$port" "$HUB_NS" "$HUB_IP:$port"
  done
}

# start_client_forwarder K: client K's HTTP API on loopback.
start_client_forwarder() {
  start_forwarder "fwd-c$1" "$(client_http_port "$1")" "$(client_ns "$1")" "$(client_ip "$1"):4646"
}

start_consul() {
  running consul >/dev/null && return 0
  start_daemon consul nsenter --net="$NETNS_DIR/$HUB_NS" "$CONSUL_BIN" agent -dev \
    -node=ferry-hub -bind="$HUB_IP" -client="$HUB_IP" -hcl='disable_update_check = true' \
    -hcl="$(consul_acl_hcl)"
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

# start_client K: Nomad client K in its namespace, unless it is running.
start_client() {
  local k=$1 name
  name=$(client_name "$k")
  running "$name" >/dev/null && return 0
  mkdir -p "$DATA/c$k" "$RUN/c$k"
  start_daemon "$name" nsenter --net="$NETNS_DIR/$(client_ns "$k")" "$NOMAD_BIN" agent -config="$ETC/c$k.hcl"
}
