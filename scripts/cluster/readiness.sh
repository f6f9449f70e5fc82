# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: waiting for the services
# and the clients to be ready.

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

# Driver UpdateTime per client, recorded before (re)starting it, so that the
# state left by the previous process is not taken for the new one's.
declare -A DRIVER_SEEN=()

# record_driver_seen K: remember the driver UpdateTime client K's node has now.
record_driver_seen() {
  local info updated=""
  if info=$(node_info "$1" 2>/dev/null); then
    IFS=$'\t' read -r _ _ _ _ updated <<<"$info"
  fi
  DRIVER_SEEN[$1]=$updated
}

# client_ready K: client K answers, and the server has its node ready with a
# ferry driver detected by the new process.
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

# wait_client K: wait for client_ready K; on failure say why and exit.
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
