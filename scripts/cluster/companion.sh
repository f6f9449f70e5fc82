# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the ferry-companion
# system job (jobspecs/companion.nomad.hcl).

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
  log "running the ferry-companion system job$( ((ACL)) && echo ', its tokens in the Nomad variable nomad/jobs/ferry-companion')"
  local -a acl=()
  if ((ACL)); then
    put_companion_tokens
    acl=(-var acl=true)
  fi
  NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" job run -detach "${acl[@]}" \
    -var "binary=$DATA/bin/ferry-companion" \
    -var "consul=$HUB_IP:8500" \
    -var "build=$(sha256sum "$DATA/bin/ferry-companion" | cut -c1-16)" \
    -var "config=$(companion_config)" \
    "$REPO/jobspecs/companion.nomad.hcl" >/dev/null
  wait_companion
}

# wait_companion: wait for the submitted version on every client whose node
# takes allocations, and for the allocations it replaces to be gone: a
# client still running a replaced allocation holds its static port, and
# Nomad then places nothing else on that node.
wait_companion() {
  local deadline=$((SECONDS + TIMEOUT)) want have version
  want=$(schedulable_clients | wc -l)
  while :; do
    version=$(curl -sf -m 3 "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/job/ferry-companion" 2>/dev/null | jq '.Version' 2>/dev/null || echo -1)
    have=$(curl -sf -m 3 "${NOMAD_AUTH[@]}" "$NOMAD_API/v1/job/ferry-companion/allocations" 2>/dev/null |
      jq --argjson v "$version" '
        if any(.[]; .DesiredStatus != "run" and (.ClientStatus == "running" or .ClientStatus == "pending")) then 0
        else [.[] | select(.ClientStatus == "running" and .DesiredStatus == "run" and .JobVersion == $v)] | length end' 2>/dev/null || echo 0)
    ((have >= want)) && break
    ((SECONDS < deadline)) || die "ferry-companion version $version is running on $have of $want clients; see 'nomad job status ferry-companion'"
    sleep 1
  done
}
