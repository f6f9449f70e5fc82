# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the commands up, env,
# status, restart-client, companion and down.

# up_clients_arg ARGS...: the N of `up [--clients N]`, checked.
up_clients_arg() {
  local n=$DEFAULT_CLIENTS
  while (($#)); do
    case $1 in
      --clients)
        (($# >= 2)) || die "--clients needs a number"
        n=$2
        shift 2
        ;;
      --clients=*) n=${1#*=}; shift ;;
      --acl) shift ;; # acl_arg
      *) die "up: unknown argument $1" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ ]] || die "--clients must be a number"
  n=$((10#$n))
  ((n >= 1 && n <= MAX_CLIENTS)) || die "--clients must be 1..$MAX_CLIENTS"
  echo "$n"
}

# up_hub: the hub namespace, its configs, forwarders and services, ready.
up_hub() {
  log "hub namespace $HUB_NS"
  setup_hub_net
  write_server_config
  if config_changed && running nomad-server >/dev/null; then
    warn "the Nomad server config changed; it applies after '$0 down' and 'up'"
  fi
  write_registry_config
  if config_changed && running registry >/dev/null; then
    warn "the registry config changed; it applies after '$0 down' and 'up'"
  fi
  start_hub_forwarders
  start_consul
  wait_until "Consul at $CONSUL_API" consul consul_ready
  setup_consul_acl
  start_server
  start_registry
  wait_until "the Nomad server to elect itself leader ($NOMAD_API)" nomad-server nomad_ready
  setup_nomad_acl
  wait_until "the registry at http://$REGISTRY_PUSH/v2/" registry registry_ready
}

# switch_acl WANT: take the cluster down if it runs with ACLs other than
# WANT (1 on, 0 off): its agents' configs and Consul's tokens change.
switch_acl() {
  local want=$1 have=0
  acl_configured && have=1
  ((want != have)) || return 0
  if running nomad-server >/dev/null || running consul >/dev/null || [[ -n $(running_clients) ]]; then
    log "ACLs $( ((want)) && echo on || echo off): taking the cluster down first"
    acl_use "$have"
    take_down 0
  fi
}

# up_client K: client K's namespace, certificate, config and forwarder, and
# the client itself unless it is running (then a changed config is only
# pointed out).
up_client() {
  local k=$1 name
  name=$(client_name "$k")
  setup_client_net "$k"
  ensure_tls "$k"
  write_client_config "$k"
  start_client_forwarder "$k"
  if ! running "$name" >/dev/null; then
    record_driver_seen "$k"
    start_client "$k"
  elif config_changed; then
    warn "the config of running client $name changed; '$0 restart-client $k' applies it"
  fi
}

cmd_up() {
  local n k acl
  local -a clients=() started=()
  n=$(up_clients_arg "$@")
  acl=$(acl_arg "$@")
  require_root
  check_tools
  tune_host
  switch_acl "$acl"
  acl_use "$acl"
  mkdir -p "$DATA" "$DATA/bin" "$ETC" "$PLUGINS" "$RUN" "$PIDS" "$LOGS"
  install_driver
  up_hub

  # Clients 1..N, plus any already running beyond N (left alone).
  mapfile -t clients < <({ seq 1 "$n"; running_clients; } | sort -nu)
  for k in "${clients[@]}"; do
    if ((k > n)); then
      log "client $(client_name "$k") is running beyond the $n requested; leaving it"
      start_client_forwarder "$k"
      continue
    fi
    running "$(client_name "$k")" >/dev/null || started+=("$k")
    up_client "$k"
  done
  for k in "${clients[@]}"; do wait_client "$k"; done
  for k in "${started[@]}"; do make_schedulable "$k"; done
  purge_stale_nodes
  if plugin_enabled; then
    run_companion
  fi

  log "cluster is up with ${#clients[@]} client(s)$( ((ACL)) && echo ", ACLs on (tokens in $ACL_DIR)"): NOMAD_ADDR=$NOMAD_API, registry $REGISTRY (push to $REGISTRY_PUSH)"
  log "eval \"\$($0 env)\" to use it"
}

cmd_env() {
  cat <<EOT
export NOMAD_ADDR=$NOMAD_API
export CONSUL_HTTP_ADDR=${CONSUL_API#http://}
export FERRY_REGISTRY=$REGISTRY
export FERRY_REGISTRY_PUSH=$REGISTRY_PUSH
export FERRY_TLS=$TLS
export FERRY_RUN=$RUN
EOT
  # With ACLs, the management tokens, for the operator (and the e2e
  # tests), and where the others are.
  if ((ACL)); then
    cat <<EOT
export NOMAD_TOKEN=$(acl_secret management.nomad)
export CONSUL_HTTP_TOKEN=$(acl_secret management.consul)
export FERRY_ACL_DIR=$ACL_DIR
EOT
  fi
}

cmd_restart_client() {
  local k=${1:-} name rewrite=0
  local -a procs=()
  [[ $k =~ ^[0-9]+$ ]] || die "usage: $0 restart-client K [--config]"
  [[ ${2:-} == --config ]] && rewrite=1
  require_root
  name=$(client_name "$k")
  [[ -f $ETC/c$k.hcl ]] || die "client $name was never started (no $ETC/c$k.hcl)"
  running nomad-server >/dev/null || die "the Nomad server is not running; use '$0 up'"
  ns_exists "$(client_ns "$k")" || die "namespace $(client_ns "$k") is missing; use '$0 up'"
  # The same config unless --config; a rebuilt driver binary is picked up
  # (all clients load it on their next start).
  if grep -q '^plugin "nomad-driver-ferry"' "$ETC/c$k.hcl"; then
    if [[ -x $DRIVER_BIN ]] && { [[ $SKIP_DRIVER_CHECK != 1 ]] || is_nomad_plugin "$DRIVER_BIN"; }; then
      copy_driver "other running clients load it on their restart"
    fi
  else
    # shellcheck disable=SC2034 # read by client_config (driver.sh)
    WITH_PLUGIN=0
  fi
  if ((rewrite)); then
    write_client_config "$k"
    config_changed && log "config of client $name written again from the environment"
  fi
  start_client_forwarder "$k"
  record_driver_seen "$k"
  # SIGTERM to the agent only, no drain: the client leaves its tasks (and
  # their shims and log collectors) running, for task recovery to find them.
  stop_daemon "$name" 60 leader
  # A driver plugin whose agent had to be killed is left behind; shims are not
  # touched (their command line goes on with "shim ...").
  mapfile -t procs < <(comm -12 <(pids_with_cmdline "$PLUGINS/nomad-driver-ferry " | sort) \
    <(pids_in_netns "$(client_ns "$k")" | sort))
  stop_pids "orphaned driver plugin process(es) of $name" 5 "${procs[@]}"
  start_client "$k"
  wait_client "$k"
  log "client $name restarted"
}

# cmd_kill_client K: SIGKILL client K's agent, its process group (log
# collectors) and its driver plugin, as when the agent crashes; the tasks
# under their shims go on. 'restart-client K' starts it again.
cmd_kill_client() {
  local k=${1:-} name pid
  [[ $k =~ ^[0-9]+$ ]] || die "usage: $0 kill-client K"
  require_root
  name=$(client_name "$k")
  pid=$(running "$name") || die "client $name is not running"
  local -a procs=()
  # Nomad starts its plugins in process groups of their own.
  mapfile -t procs < <(comm -12 <(pids_with_cmdline "$PLUGINS/nomad-driver-ferry " | sort) \
    <(pids_in_netns "$(client_ns "$k")" | sort))
  log "killing $name (pid $pid), its process group and its driver plugin (${procs[*]:-none})"
  kill -KILL -- "-$pid" "${procs[@]}" 2>/dev/null || true
  wait_gone "$pid" 10 || die "$name (pid $pid) is still alive"
  rm -f "$PIDS/$name.pid"
}

# cmd_crash_client K: client K as at a power loss: its agent (and its
# process group), its driver plugin, the shims of its tasks and every
# process of its containers are SIGKILLed at once, and nothing is cleaned
# up. Nomad's server marks the node down once its heartbeat lapses.
# 'restart-client K' starts it again (its runc root still lists the dead
# containers; the dangling containers reconciler removes them).
cmd_crash_client() {
  local k=${1:-} name pid root id
  [[ $k =~ ^[0-9]+$ ]] || die "usage: $0 crash-client K"
  require_root
  name=$(client_name "$k")
  pid=$(running "$name") || die "client $name is not running"
  root="$RUN/c$k/runc"
  local -a procs=() tasks=()
  # The agent, its plugins and log collectors, the shims, and tasks on the
  # host network: all in the client's namespace.
  mapfile -t procs < <(pids_in_netns "$(client_ns "$k")")
  # Tasks in network namespaces of their own.
  if command -v "$RUNC_BIN" >/dev/null; then
    while read -r id; do
      [[ -n $id ]] || continue
      mapfile -t -O "${#tasks[@]}" tasks < <("$RUNC_BIN" --root "$root" ps --format json "$id" 2>/dev/null | tr -d '[] ' | tr ',' '\n')
    done < <("$RUNC_BIN" --root "$root" list -q 2>/dev/null || true)
  fi
  log "crashing $name (pid $pid): ${#procs[@]} process(es) in its namespace, ${#tasks[@]} of its containers"
  kill -KILL -- "-$pid" "${procs[@]}" "${tasks[@]}" 2>/dev/null || true
  wait_gone "$pid" 10 || die "$name (pid $pid) is still alive"
  rm -f "$PIDS/$name.pid"
}

# status_client K: one line about client K.
status_client() {
  local k=$1 name pid info st det hl was
  name=$(client_name "$k")
  if ! pid=$(running "$name"); then
    printf '%-13s stopped\n' "$name"
    return 0
  fi
  info=$(node_info "$k" 2>/dev/null || true)
  IFS=$'\t' read -r st det hl _ _ <<<"${info:-?}"
  was=$(unschedulable "$k") || was=""
  printf '%-13s running (pid %s, %s, http 127.0.0.1:%s%s): node %s%s, ferry detected=%s healthy=%s\n' \
    "$name" "$pid" "$(client_ip "$k")" "$(client_http_port "$k")" \
    "$(running "fwd-c$k" >/dev/null || echo ' NOT FORWARDED')" "${st:-?}" "${was:+ ($was)}" \
    "${det:-?}" "${hl:-?}"
}

cmd_status() {
  local name pid k ns
  for name in consul nomad-server registry "${FORWARD_PORTS[@]/#/fwd-}"; do
    if pid=$(running "$name"); then
      printf '%-13s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-13s stopped\n' "$name"
    fi
  done
  while read -r k; do
    [[ -n $k ]] || continue
    status_client "$k"
  done < <(configured_clients)
  ns=$(ip netns list 2>/dev/null | awk '$1 ~ /^ferry-/ {print $1}' | sort | tr '\n' ' ')
  printf '%-13s %s\n' namespaces "${ns:-none}"
  if registry_ready; then
    printf '%-13s %s\n' registry "http://$REGISTRY_PUSH/v2/ answers (jobs use $REGISTRY)"
  fi
}

cmd_companion() {
  require_root
  run_companion
}

# down_clients: the clients first, so nothing restarts the tasks removed
# next: containers, shims, and anything else still living in a client
# namespace (task log collectors, executors, plugins of a killed agent).
down_clients() {
  local f name ns
  local -a procs=()
  for f in "$PIDS"/ferry-c*.pid; do
    [[ -e $f ]] || continue
    name=${f##*/}
    stop_daemon "${name%.pid}" 30 group
  done
  delete_containers
  mapfile -t procs < <(shim_pids)
  stop_pids "leftover shim process(es)" 10 "${procs[@]}"
  while read -r ns; do
    mapfile -t procs < <(pids_in_netns "$ns")
    stop_pids "leftover process(es) in $ns" 10 "${procs[@]}"
  done < <(client_namespaces)
}

# down_hub: the registry, the server, Consul, the forwarders and whatever
# else lives in the hub namespace.
down_hub() {
  local f name
  local -a procs=()
  stop_daemon registry 20
  stop_daemon nomad-server 30
  stop_daemon consul 20
  for f in "$PIDS"/fwd-*.pid; do
    [[ -e $f ]] || continue
    name=${f##*/}
    stop_daemon "${name%.pid}" 5
  done
  mapfile -t procs < <(forwarder_pids)
  stop_pids "leftover forwarder(s)" 5 "${procs[@]}"
  if ns_exists "$HUB_NS"; then
    mapfile -t procs < <(pids_in_netns "$HUB_NS")
    stop_pids "leftover process(es) in $HUB_NS" 10 "${procs[@]}"
  fi
}

# remove_namespaces: the allocations' network namespaces attached to the
# clients', the clients' and the hub's. Removing a namespace removes its
# interfaces (veths, bridges) and its iptables rules.
remove_namespaces() {
  local ns d
  local -a client_nss=() allocs=()
  mapfile -t client_nss < <(client_namespaces)
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
}

# purge_state: remove $DATA and $RUN, unmounting what is mounted below.
purge_state() {
  local d
  for d in "$DATA" "$RUN"; do
    [[ -d $d ]] || continue
    umount_under "$d"
    log "removing $d"
    # --one-file-system: never descend into anything still mounted below.
    rm -rf --one-file-system "$d" || warn "could not remove all of $d"
  done
}

cmd_down() {
  local purge=0
  while (($#)); do
    case $1 in
      --purge) purge=1; shift ;;
      *) die "down: unknown argument $1" ;;
    esac
  done
  require_root
  take_down "$purge"
}

# take_down PURGE: stop everything `up` started; with PURGE=1 remove the
# state too.
take_down() {
  local purge=$1
  down_clients
  down_hub
  remove_namespaces
  rm -f "$PIDS"/*.pid
  if ((purge)); then
    purge_state
  fi
  log "cluster is down"
}
