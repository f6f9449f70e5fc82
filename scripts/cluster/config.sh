# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the configs of the Nomad
# server, the clients and the registry, in $ETC, rendered from the templates
# in scripts/cluster/templates/.
#
# A template's @name@ is replaced by the value its caller gives for name.
# The placeholder of an optional line (@platform_line@) stands alone on its
# line, and is replaced by the whole line or by nothing.

# render_template TEMPLATE name=VALUE...: TEMPLATE (a file name under
# $TEMPLATES) with each @name@ replaced by its VALUE, in one pass (a value is
# never itself searched for placeholders). A placeholder without a value is
# an error.
render_template() {
  local file=$TEMPLATES/$1 text out="" key pair
  local -A values=()
  shift
  for pair in "$@"; do values[${pair%%=*}]=${pair#*=}; done
  [[ -r $file ]] || die "template $file is missing"
  IFS= read -r -d '' text <"$file" || true
  while [[ $text =~ @([a-z_][a-z0-9_]*)@ ]]; do
    key=${BASH_REMATCH[1]}
    [[ -v values[$key] ]] || die "$file: no value for @$key@"
    out+=${text%%"@$key@"*}${values[$key]}
    text=${text#*"@$key@"}
  done
  printf '%s' "$out$text"
}

# write_if_changed FILE: write stdin to FILE unless FILE already has it;
# config_changed tells which (an agent already running needs a restart to
# see it).
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

# config_changed: whether the last write_if_changed changed its file.
config_changed() { ((CHANGED)); }

# write_config FILE TEMPLATE name=VALUE...: render TEMPLATE into FILE
# (write_if_changed). Rendered first, so that a template error leaves FILE
# as it was.
write_config() {
  local file=$1 text
  shift
  text=$(render_template "$@")
  write_if_changed "$file" <<<"$text"
}

write_server_config() {
  write_config "$ETC/server.hcl" server.hcl data="$DATA" hub_ip="$HUB_IP" log_level="$LOG_LEVEL" \
    acl_block="$(acl_block)" consul_token_line="$(acl_token_line "" management.consul)"
}

write_registry_config() {
  write_config "$ETC/registry.yml" registry.yml data="$DATA" hub_ip="$HUB_IP"
}

# client_config K: the agent config of client K, with the ferry driver's
# and raw_exec's plugin blocks when the clients load the driver.
client_config() {
  local k=$1
  local -a shared=(k="$k" name="$(client_name "$k")" ip="$(client_ip "$k")"
    data="$DATA" run="$RUN" hub_ip="$HUB_IP" log_level="$LOG_LEVEL")
  render_template client.hcl "${shared[@]}" plugins="$PLUGINS" \
    http_port="$(client_http_port "$k")" fingerprint_denylist="$FINGERPRINT_DENYLIST" \
    net="$NET" cni_plugins="$CNI_PLUGINS" cni_config_dir="$ETC/cni-c$k" \
    acl_block="$(acl_block)" consul_token_line="$(acl_token_line "" management.consul)"
  if plugin_enabled; then
    echo
    render_template client-plugins.hcl "${shared[@]}" registry="$REGISTRY" tls="$TLS" \
      transfer_port="$TRANSFER_PORT" checkpoint_dir_line="$(checkpoint_dir_line)" \
      platform_line="$(platform_line "$k")" permissions_lines="$(permissions_lines)" \
      gc_lines="$(client_lines GC "$k")" transfer_lines="$(client_lines TRANSFER "$k")" \
      images_block="$(images_block "$k")" \
      nomad_token_line="$(acl_token_line "    " driver.nomad)" \
      consul_token_line="$(acl_token_line "    " driver.consul)"
  fi
}

write_client_config() {
  local text
  mkdir -p "$ETC/cni-c$1"
  write_config "$ETC/cni-c$1/ferry.conflist" ferry.conflist net="$NET" hub_ip="$HUB_IP" ip="$(client_ip "$1")" \
    consul_token="$(acl_token_json driver.consul)" nomad_token="$(acl_token_json driver.nomad)"
  text=$(client_config "$1")
  write_if_changed "$ETC/c$1.hcl" <<<"$text"
}

# checkpoint_dir_line: with FERRY_CHECKPOINT_DIR set, every client writes
# its checkpoints there (storage all clients share) instead of serving them.
checkpoint_dir_line() {
  if [[ -n ${FERRY_CHECKPOINT_DIR:-} ]]; then
    printf '    checkpoint_dir      = "%s"\n' "$FERRY_CHECKPOINT_DIR"
  fi
}

# permissions_lines: with FERRY_OPEN_PERMISSIONS=1, tasks may bind host
# paths and add any capability, as an operator opens them.
permissions_lines() {
  if [[ ${FERRY_OPEN_PERMISSIONS:-0} == 1 ]]; then
    printf '    volumes {\n      enabled = true\n    }\n    allow_caps = ["all"]\n'
  fi
}

# platform_line K: with FERRY_PLATFORM_C<K> set (e.g. linux/arm64), client K
# chooses images for that platform, as a node of that architecture would.
# client_lines NAME K: FERRY_<NAME>_C<K>, HCL for a block of client K's
# driver config, indented.
client_lines() {
  local var="FERRY_$1_C$2" body
  body=${!var:-}
  if [[ -n $body ]]; then
    printf '      %s\n' "${body//$'\n'/$'\n'      }"
  fi
}

# images_block K: the driver's images block of client K, when
# FERRY_IMAGES_C<K> gives it a body.
images_block() {
  local body
  body=$(client_lines IMAGES "$1")
  if [[ -n $body ]]; then
    printf '    images {
%s
    }
' "$body"
  fi
}

platform_line() {
  local var="FERRY_PLATFORM_C$1"
  if [[ -n ${!var:-} ]]; then
    printf '    platform            = "%s"\n' "${!var}"
  fi
}
