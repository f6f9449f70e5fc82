# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the network namespaces,
# the hub's bridge and the clients' veths.

# ns_exists NS: whether the named network namespace NS exists.
ns_exists() { [[ -e $NETNS_DIR/$1 ]] && ip netns list | awk '{print $1}' | grep -qx "$1"; }

# ensure_ns NS: create namespace NS if needed, with its loopback up.
ensure_ns() {
  ns_exists "$1" || ip netns add "$1"
  ip -n "$1" link set lo up
}

# client_namespaces: the clients' namespaces that exist (ferry-cK).
client_namespaces() {
  ip netns list 2>/dev/null | awk '$1 ~ /^ferry-c[0-9]+$/ {print $1}'
}

# setup_hub_net: the hub namespace with its bridge and address.
setup_hub_net() {
  ensure_ns "$HUB_NS"
  if ! ip -n "$HUB_NS" link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($HUB_IP/24) in namespace $HUB_NS"
    ip -n "$HUB_NS" link add "$BRIDGE" type bridge
  fi
  ip -n "$HUB_NS" addr replace "$HUB_IP/24" dev "$BRIDGE"
  ip -n "$HUB_NS" link set "$BRIDGE" up
}

# setup_client_net K: client K's namespace, its eth0 on the hub's bridge and
# its default route through the hub.
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

# alloc_netns NS: named namespaces (Nomad allocation networks) with a veth
# into NS.
alloc_netns() {
  ip -n "$1" netns list-id 2>/dev/null |
    sed -n 's/.*iproute2 netns name: \([^)]*\)).*/\1/p' | grep -v '^ferry-' || true
}
