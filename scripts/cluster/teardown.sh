# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: what `down` removes
# besides the daemons: containers, CNI address reservations, mounts.

# delete_containers: force-delete every runc container of the cluster's clients.
delete_containers() {
  local root id
  command -v "$RUNC_BIN" >/dev/null || return 0
  for root in "$RUN"/c*/runc; do
    [[ -d $root ]] || continue
    while read -r id; do
      [[ -n $id ]] || continue
      log "deleting container $id ($root)"
      "$RUNC_BIN" --root "$root" delete --force "$id" || warn "runc delete $id failed"
    done < <("$RUNC_BIN" --root "$root" list -q 2>/dev/null || true)
  done
}

# release_cni_addresses [ALLOC...]: drop the host-local IPAM reservations
# (Nomad's bridge network keeps them in /var/run/cni/nomad, shared by all
# clients on the host) of this cluster's allocations, those with a directory
# under a client's data_dir and the ALLOCs given. Removing a client's
# namespace skips the CNI DEL that would release them, and a client
# restoring an allocation later would be refused a "duplicate allocation".
CNI_IPAM_DIR=/var/run/cni/nomad
release_cni_addresses() {
  local d f id n=0
  local -A ours=()
  [[ -d $CNI_IPAM_DIR ]] || return 0
  for d in "$DATA"/c*/alloc/*/; do
    [[ -d $d ]] || continue
    d=${d%/}
    ours[${d##*/}]=1
  done
  for id in "$@"; do ours[$id]=1; done
  ((${#ours[@]})) || return 0
  for f in "$CNI_IPAM_DIR"/*; do
    [[ -f $f ]] || continue
    case ${f##*/} in last_reserved_ip.* | lock) continue ;; esac
    id=$(head -n 1 "$f" 2>/dev/null) || continue
    id=${id%$'\r'} # host-local ends lines with CRLF
    if [[ -n $id && -n ${ours[$id]:-} ]]; then
      rm -f "$f"
      n=$((n + 1))
    fi
  done
  ((n == 0)) || log "released $n CNI address reservation(s) of allocations in $CNI_IPAM_DIR"
}

# umount_under DIR: unmount everything mounted at or below DIR, deepest first.
umount_under() {
  local mp
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo |
    awk '{print length, $0}' | sort -rn | cut -d' ' -f2- |
    while read -r mp; do
      mp=$(printf '%b' "$mp") # mountinfo escapes blanks as \040
      umount -l "$mp" 2>/dev/null || warn "could not unmount $mp"
    done
}
