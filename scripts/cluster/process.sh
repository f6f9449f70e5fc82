# shellcheck shell=bash
# Ferry dev cluster, sourced by scripts/cluster.sh: the daemons' pid files,
# starting and stopping them, and finding the processes they leave behind.

# proc_start_time PID: the process start time (field 22 of /proc/PID/stat);
# fails if PID is gone or a zombie.
proc_start_time() {
  local stat
  local -a fields=()
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The fields after the command name (which may hold blanks), from field 3,
  # the state.
  read -r -a fields <<<"${stat##*) }"
  [[ ${fields[0]:-Z} != Z && -n ${fields[19]:-} ]] || return 1
  echo "${fields[19]}"
}

pid_alive() { proc_start_time "$1" >/dev/null; }

# running NAME: prints the pid of the daemon NAME if it is alive.
running() {
  local f=$PIDS/$1.pid pid start now
  [[ -f $f ]] || return 1
  read -r pid start <"$f" || return 1
  [[ -n ${pid:-} ]] || return 1
  now=$(proc_start_time "$pid") || return 1
  [[ $now == "$start" ]] || return 1
  echo "$pid"
}

# start_daemon NAME CMD...: start CMD in a new session, logging to NAME.log.
start_daemon() {
  local name=$1 logf=$LOGS/$1.log pid start
  shift
  printf '\n===== %s starting: %s\n' "$(date -Is)" "$*" >>"$logf"
  setsid "$@" </dev/null >>"$logf" 2>&1 &
  pid=$!
  start=$(proc_start_time "$pid") || {
    tail_log "$name"
    die "$name exited immediately"
  }
  echo "$pid $start" >"$PIDS/$name.pid"
  log "started $name (pid $pid, log $logf)"
}

# wait_gone PID SECONDS: wait for PID to exit; fails on timeout.
wait_gone() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# stop_daemon NAME [SECONDS] [group|leader]: SIGTERM, wait, then SIGKILL.
# "group" signals the whole process group (the daemon is a session leader, so
# its pgid is its pid); "leader" only the daemon itself, leaving whatever it
# started alone.
stop_daemon() {
  local name=$1 secs=${2:-20} scope=${3:-group} pid target
  if pid=$(running "$name"); then
    target=$pid
    [[ $scope == group ]] && target=-$pid
    log "stopping $name (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    if ! wait_gone "$pid" "$secs"; then
      warn "$name did not exit within ${secs}s, killing it"
      kill -KILL -- "$target" 2>/dev/null || true
      wait_gone "$pid" 5 || warn "$name (pid $pid) is still alive"
    fi
    # Stragglers left in the process group (plugins of a killed agent).
    if [[ $scope == group ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PIDS/$name.pid"
}

# tail_log NAME [LINES]: the last lines of daemon NAME's log, on stderr.
tail_log() {
  local f=$LOGS/$1.log
  [[ -f $f ]] || return 0
  printf -- '----- last lines of %s -----\n' "$f" >&2
  tail -n "${2:-30}" "$f" >&2
  printf -- '-----\n' >&2
}

# kill_pids SECONDS PID...: SIGTERM, wait up to SECONDS, SIGKILL the rest.
kill_pids() {
  local secs=$1 pid i
  local -a left=()
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    left=()
    for pid in "$@"; do if pid_alive "$pid"; then left+=("$pid"); fi; done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  for pid in "${left[@]}"; do wait_gone "$pid" 5 || warn "pid $pid survived SIGKILL"; done
}

# stop_pids WHAT SECONDS PID...: kill_pids, saying what they are.
stop_pids() {
  local what=$1 secs=$2
  shift 2
  (($#)) || return 0
  log "stopping $# $what"
  kill_pids "$secs" "$@"
}

# pids_in_netns NS: pids of all processes whose network namespace is NS.
pids_in_netns() {
  local ino link p
  ino=$(stat -L -c %i "$NETNS_DIR/$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    link=$(readlink "$p/ns/net" 2>/dev/null) || continue
    [[ $link == "net:[$ino]" ]] && echo "${p#/proc/}"
  done
  return 0
}

# pids_with_cmdline PATTERN: pids whose command line (blank-separated) matches
# the glob PATTERN.
pids_with_cmdline() {
  local p cmd
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} != "$$" ]] || continue
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    # shellcheck disable=SC2053 # $1 is a glob pattern, matched unquoted on purpose
    [[ $cmd == $1 ]] && echo "${p#/proc/}"
  done
  return 0
}

# shim_pids: the per-task shims of this cluster's driver instances: they are
# not children of the Nomad clients, so they outlive them. A shim that leads
# its own process group brings the group along (runc or CRIU it is running).
shim_pids() {
  local -a shims=()
  mapfile -t shims < <(pids_with_cmdline "*nomad-driver-ferry shim $RUN/*")
  ((${#shims[@]})) || return 0
  ps -eo pid=,pgid= | awk -v s=" ${shims[*]} " '
    index(s, " " $1 " ") || ($1 != $2 && index(s, " " $2 " ")) {print $1}'
}

# forwarder_pids: this cluster's loopback forwarders (also ones whose pid
# file is gone).
forwarder_pids() { pids_with_cmdline "socat TCP-LISTEN:*nsenter --net=$NETNS_DIR/ferry-*"; }
