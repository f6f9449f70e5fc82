# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the ferry driver plugin
# in $PLUGINS, which every client loads.

# is_nomad_plugin BIN: go-plugin binaries started without their handshake
# cookie print this notice and exit.
is_nomad_plugin() {
  env -u NOMAD_PLUGIN_MAGIC_COOKIE timeout 10 "$1" </dev/null 2>&1 |
    grep -q 'This binary is a plugin'
}

# install_driver: copy the driver into the shared plugin_dir (atomically, so
# running agents and shims keep their old inode). Decides plugin_enabled.
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

# plugin_enabled: whether the clients load the ferry driver (and run the
# companion), as install_driver decided.
plugin_enabled() { ((WITH_PLUGIN)); }

# copy_driver NOTE: install DRIVER_BIN as the plugin if it differs; its
# binary is the Ferry CNI plugin too, as "ferry" in CNI_PLUGINS.
copy_driver() {
  mkdir -p "$CNI_PLUGINS"
  ln -sfn "$PLUGINS/nomad-driver-ferry" "$CNI_PLUGINS/ferry"
  if ! cmp -s "$DRIVER_BIN" "$PLUGINS/nomad-driver-ferry"; then
    install -m 0755 "$DRIVER_BIN" "$DATA/.nomad-driver-ferry.new"
    mv -f "$DATA/.nomad-driver-ferry.new" "$PLUGINS/nomad-driver-ferry"
    log "installed $DRIVER_BIN into $PLUGINS ($1)"
  fi
}
