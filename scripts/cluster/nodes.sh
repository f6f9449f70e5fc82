# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the clients, and their
# nodes as the Nomad server sees them. The server keeps its state across
# `down` and `up`: a node may still be up there, drained or ineligible from
# an earlier run.

# node_id K: the node id of client K (known once it has registered).
node_id() { cat "$DATA/c$1/client/client-id" 2>/dev/null; }

# node_info K: "status<TAB>detected<TAB>healthy<TAB>description<TAB>updated"
# of client K's node and its ferry driver, as the server sees them.
node_info() {
  local id
  id=$(node_id "$1") || return 1
  curl -sf -m 3 "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/node/$id" 2>/dev/null | jq -r '[.Status,
      (.Drivers.ferry.Detected // false), (.Drivers.ferry.Healthy // false),
      (.Drivers.ferry.HealthDescription // ""), (.Drivers.ferry.UpdateTime // "")] | @tsv'
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
    curl -sf -m 10 -X PUT "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/node/$id/purge" >/dev/null || warn "could not purge node $name"
  done < <(curl -sf -m 5 "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/nodes" | jq -r '.[] | [.ID, .Name, .Status] | @tsv')
}

# unschedulable K: what keeps client K's node from taking new allocations,
# "draining" or "ineligible"; fails if nothing does, or if the server cannot
# tell.
unschedulable() {
  local id info eligibility draining
  id=$(node_id "$1") || return 1
  info=$(curl -sf -m 3 "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/node/$id" 2>/dev/null |
    jq -r '[.SchedulingEligibility, (.DrainStrategy != null)] | @tsv') || return 1
  IFS=$'\t' read -r eligibility draining <<<"$info"
  if [[ $draining == true ]]; then
    echo draining
  elif [[ $eligibility == ineligible ]]; then
    echo ineligible
  else
    return 1
  fi
}

# nomad_cli ARGS...: the nomad command against this cluster, quiet unless it
# fails.
nomad_cli() {
  local out
  out=$(NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" "$@" 2>&1) || die "nomad $*: $out"
}

# make_schedulable K: end a drain of client K's node and make it eligible,
# saying so. For the clients `up` starts: their nodes' drains and
# eligibility are left from an earlier run, and an ineligible node would
# take nothing, not even the companion.
make_schedulable() {
  local k=$1 name id was did
  was=$(unschedulable "$k") || return 0
  name=$(client_name "$k") id=$(node_id "$k")
  did="made eligible"
  if [[ $was == draining ]]; then
    nomad_cli node drain -disable -yes "$id"
    did="drain disabled, $did"
  fi
  nomad_cli node eligibility -enable "$id"
  log "client $name was $was (left by an earlier run): $did"
}

# schedulable_clients: the running clients whose nodes take new allocations.
# The others (drained or made ineligible while their client ran) are left
# so, with a warning: they get no companion until they are made eligible.
schedulable_clients() {
  local k was
  while read -r k; do
    if was=$(unschedulable "$k"); then
      warn "client $(client_name "$k") is $was; left so, without ferry-companion ('nomad node eligibility -enable $(node_id "$k")' undoes it)"
    else
      echo "$k"
    fi
  done < <(running_clients)
}
