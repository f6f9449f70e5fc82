# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: ACLs, with `up --acl`
# (or FERRY_ACL=1).
#
# Consul runs with default_policy "deny" and Nomad with its ACLs on, in the
# server and every client. Their management tokens, and the tokens made
# from the policies in jobspecs/acl/ for the driver and the companion, are
# kept in $ACL_DIR, one secret ID per file:
#
#   management.consul  Consul's initial management token, also the Consul
#                      agent's and the Nomad agents' Consul token (dev only)
#   management.nomad   Nomad's bootstrap token: `env` gives it to the
#                      operator, and the e2e tests
#   driver.nomad, driver.consul        the driver's and its CNI plugin's
#   companion.nomad, companion.consul  the companion's, in the Nomad
#                                      variable nomad/jobs/ferry-companion
#
# Consul's dev agent keeps nothing across restarts, so its policies and
# tokens are made again, with the same secret IDs, whenever it starts;
# Nomad's survive in the server's state, and are made again only if they
# are not valid there.

ACL_DIR=$DATA/acl
ACL=0
# Nomad API calls made with curl carry the management token in ACL mode.
# shellcheck disable=SC2034 # used by the other sections
NOMAD_AUTH=()

# acl_arg ARGS...: whether `up ARGS` asks for ACLs (--acl, or FERRY_ACL=1);
# prints 1 or 0 and ignores the other arguments.
acl_arg() {
  local a want=0
  [[ ${FERRY_ACL:-0} == 1 ]] && want=1
  for a in "$@"; do [[ $a == --acl ]] && want=1; done
  echo "$want"
}

# acl_configured: whether the cluster's generated server config, that of
# the last `up`, has ACLs on.
acl_configured() { grep -q '^acl {' "$ETC/server.hcl" 2>/dev/null; }

# acl_secret NAME: the secret ID kept as NAME, made (a random UUID) if
# there is none.
acl_secret() {
  local f=$ACL_DIR/$1
  if [[ ! -s $f ]]; then
    mkdir -p "$ACL_DIR"
    chmod 700 "$ACL_DIR"
    (umask 077 && cat /proc/sys/kernel/random/uuid >"$f")
  fi
  cat "$f"
}

# acl_use ON: the mode of this run's commands: with ON=1, the Nomad CLI and
# the curl calls to Nomad carry the management token.
acl_use() {
  ACL=$1
  if ((ACL)); then
    NOMAD_TOKEN=$(acl_secret management.nomad)
    export NOMAD_TOKEN
    # shellcheck disable=SC2034 # used by the other sections
    NOMAD_AUTH=(-H "X-Nomad-Token: $NOMAD_TOKEN")
  else
    unset NOMAD_TOKEN
    # shellcheck disable=SC2034
    NOMAD_AUTH=()
  fi
}

# Lines the configs get in ACL mode, nothing otherwise.
acl_block() {
  if ((ACL)); then printf 'acl {\n  enabled = true\n}\n'; fi
}
# acl_token_line INDENT NAME: a token attribute with the secret kept as NAME.
acl_token_line() {
  if ((ACL)); then printf '%s  token   = "%s"\n' "$1" "$(acl_secret "$2")"; fi
}
# acl_token_json NAME: the CNI configuration's token member.
acl_token_json() {
  if ((ACL)); then printf ', "token": "%s"' "$(acl_secret "$1")"; fi
}

# consul_acl_hcl: Consul's ACL settings, for its -hcl flag.
consul_acl_hcl() {
  local mgmt
  ((ACL)) || return 0
  mgmt=$(acl_secret management.consul)
  printf 'acl { enabled = true, default_policy = "deny", enable_token_persistence = true, tokens { initial_management = "%s", agent = "%s" } }' "$mgmt" "$mgmt"
}

# consul_cli ARGS...: the consul command with the management token.
consul_cli() {
  CONSUL_HTTP_ADDR=${CONSUL_API#http://} CONSUL_HTTP_TOKEN=$(acl_secret management.consul) "$CONSUL_BIN" "$@"
}

# setup_consul_acl: the policies of jobspecs/acl/ and the driver's and the
# companion's tokens in Consul, unless there.
setup_consul_acl() {
  local who accessor out
  ((ACL)) || return 0
  for who in driver companion; do
    if ! consul_cli acl policy read -name "ferry-$who" >/dev/null 2>&1; then
      out=$(consul_cli acl policy create -name "ferry-$who" -rules "@$REPO/jobspecs/acl/$who.consul.hcl" 2>&1) ||
        die "consul acl policy create ferry-$who: $out"
    fi
    accessor=$(acl_secret "$who.consul.accessor")
    if ! consul_cli acl token read -id "$accessor" >/dev/null 2>&1; then
      out=$(consul_cli acl token create -description "ferry-$who" -policy-name "ferry-$who" \
        -accessor "$accessor" -secret "$(acl_secret "$who.consul")" 2>&1) ||
        die "consul acl token create ferry-$who: $out"
    fi
  done
  log "Consul ACLs: policies ferry-driver and ferry-companion, and their tokens, in $ACL_DIR"
}

# nomad_token_valid SECRET: whether Nomad knows the token.
nomad_token_valid() {
  curl -sf -m 5 -H "X-Nomad-Token: $1" "$NOMAD_API/v1/acl/token/self" >/dev/null 2>&1
}

# bootstrap_nomad_acl: Nomad's ACL system, bootstrapped with the kept
# management token. A server bootstrapped before with a token not kept
# (its state outlived $ACL_DIR) is reset first, with its reset index.
bootstrap_nomad_acl() {
  local secret out index
  secret=$(acl_secret management.nomad)
  nomad_token_valid "$secret" && return 0
  out=$(NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" acl bootstrap "$ACL_DIR/management.nomad" 2>&1) && return 0
  [[ $out =~ reset\ index:\ ([0-9]+) ]] || die "nomad acl bootstrap: $out"
  index=${BASH_REMATCH[1]}
  log "Nomad's ACLs were bootstrapped with a token not kept in $ACL_DIR: resetting (index $index)"
  echo "$index" >"$DATA/server/server/acl-bootstrap-reset"
  out=$(NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" acl bootstrap "$ACL_DIR/management.nomad" 2>&1) ||
    die "nomad acl bootstrap after the reset: $out"
}

# setup_nomad_acl: bootstrap, the policies of jobspecs/acl/ and the
# driver's and the companion's tokens in Nomad, unless valid there.
setup_nomad_acl() {
  local who out secret
  ((ACL)) || return 0
  bootstrap_nomad_acl
  for who in driver companion; do
    nomad_cli acl policy apply -description "ferry $who (jobspecs/acl/$who.nomad.hcl)" \
      "ferry-$who" "$REPO/jobspecs/acl/$who.nomad.hcl"
    secret=$(cat "$ACL_DIR/$who.nomad" 2>/dev/null || true)
    if [[ -z $secret ]] || ! nomad_token_valid "$secret"; then
      out=$(NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" acl token create -name "ferry-$who" -policy "ferry-$who" -json 2>&1) ||
        die "nomad acl token create ferry-$who: $out"
      (umask 077 && jq -r .SecretID <<<"$out" >"$ACL_DIR/$who.nomad")
    fi
  done
  log "Nomad ACLs: bootstrapped; policies ferry-driver and ferry-companion, and their tokens, in $ACL_DIR"
}

# put_companion_tokens: the companion's tokens into the Nomad variable
# its job's tasks read them from (jobspecs/companion.nomad.hcl, -var
# acl=true), as an operator would put them.
put_companion_tokens() {
  local out
  out=$(jq -n --arg n "$(cat "$ACL_DIR/companion.nomad")" --arg c "$(acl_secret companion.consul)" \
    '{Items: {nomad_token: $n, consul_token: $c}}' |
    NOMAD_ADDR=$NOMAD_API "$NOMAD_BIN" var put -force -in json nomad/jobs/ferry-companion - 2>&1) ||
    die "nomad var put nomad/jobs/ferry-companion: $out"
}
