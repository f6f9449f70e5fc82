# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the certificates of the
# drivers' transfers, in $TLS.

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
