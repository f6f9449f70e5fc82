#!/usr/bin/env bash
# Ferry development cluster on one host.
#
#   scripts/cluster.sh up [--clients N] [--acl]
#                                         start (or complete) the cluster, wait until ready;
#                                         --acl: with Nomad's and Consul's ACLs on
#   scripts/cluster.sh env                print the environment for talking to it
#   scripts/cluster.sh status             short summary
#   scripts/cluster.sh restart-client K [--config]
#                                         SIGTERM client K (no drain) and start it again;
#                                         --config: first write its config again from the
#                                         environment (as up does)
#   scripts/cluster.sh kill-client K      SIGKILL client K's agent and plugins (tasks go on)
#   scripts/cluster.sh crash-client K     SIGKILL client K whole, its tasks too, as at a power loss
#   scripts/cluster.sh companion          resubmit the ferry-companion system job
#   scripts/cluster.sh down [--purge]     stop everything `up` started; --purge also
#                                         removes /var/lib/ferry-dev and the runtime state
#
# Layout. Every address lives either on loopback or inside a network
# namespace this script creates; nothing is configured on the host's own
# interfaces:
#
#   ferry-hub   namespace with bridge ferry0 (10.97.0.1/24) running a Consul dev
#               agent (:8500), the Nomad server (:4646/:4647) and an OCI
#               registry (:5000)
#   ferry-cK    one namespace per Nomad client K (1..N), eth0 = 10.97.0.(10+K)/24,
#               a veth whose other end is enslaved to ferry0
#   127.0.0.1   socat forwarders in the root namespace: 4646, 8500 and 5000 to
#               the hub, so NOMAD_ADDR=http://127.0.0.1:4646 and images are
#               pushed to 127.0.0.1:5000 (jobs name them 10.97.0.1:5000); and
#               4646+100*K (4746, 4846, ...) to client K's HTTP API, which is
#               the address the client advertises
#
# Agents are started with `nsenter --net=...` (not `ip netns exec`) so they
# stay in the host's mount namespace, which the driver's overlay mounts and
# CRIU need. Each daemon runs in its own session; its pid (and start time, to
# survive pid reuse) is kept in $RUN/pids/<name>.pid (RUN below) and its log in
# /var/log/ferry-dev/<name>.log. Generated configs are in /var/lib/ferry-dev/etc,
# rendered from the templates in scripts/cluster/templates/.
#
# The Nomad server keeps its state in /var/lib/ferry-dev across `down` and
# `up`: a node an earlier run left drained or ineligible is made eligible
# again when `up` starts its client.
#
# Sections. This file holds the settings and the commands' dispatch; the rest
# is sourced from scripts/cluster/, one file per concern:
#
#   common.sh     logging; the clients' names, addresses and ports
#   process.sh    daemons (pid files, start, stop) and stray processes
#   netns.sh      the namespaces, the bridge and the clients' veths
#   config.sh     the agents' and the registry's configs, from templates/
#   tls.sh        the cluster's CA and the clients' certificates
#   driver.sh     the driver plugin the clients load
#   daemons.sh    starting the forwarders, Consul, the server, the registry, clients
#   readiness.sh  waiting for each of them to be ready
#   acl.sh        ACLs (up --acl): bootstrap, policies, the tokens in $DATA/acl
#   nodes.sh      the clients' nodes as the server sees them: stale, ineligible
#   companion.sh  the ferry-companion system job
#   teardown.sh   what `down` removes besides daemons: containers, addresses, mounts
#   commands.sh   up, env, status, restart-client, kill-client, crash-client, companion, down
#
# Environment:
#   FERRY_DRIVER_BIN         driver binary to install (default <repo>/bin/nomad-driver-ferry)
#   FERRY_SKIP_DRIVER_CHECK  1 = do not wait for the ferry driver to be detected;
#                            a binary that is not a Nomad plugin is then left out
#   FERRY_LOG_LEVEL          Nomad agents' log level (default INFO)
#   FERRY_TIMEOUT            seconds to wait for each readiness step (default 120)
#   FERRY_NOMAD_BIN, FERRY_CONSUL_BIN, FERRY_REGISTRY_BIN, FERRY_RUNC_BIN
#   FERRY_COMPANION_BIN      ferry-companion binary (default <repo>/bin/ferry-companion)
#   FERRY_CHECKPOINT_DIR     a checkpoint_dir every client shares (default: none, checkpoints are served)
#   FERRY_PLATFORM_C<K>      platform client K chooses images for, e.g. linux/arm64
#   FERRY_GC_C<K>, FERRY_TRANSFER_C<K>, FERRY_IMAGES_C<K>
#                            HCL added to the driver's gc, transfer and images blocks
#                            of client K, e.g. FERRY_GC_C2='checkpoints { failed = "1m" }'
#   FERRY_OPEN_PERMISSIONS   1 = tasks may bind host paths and add any capability
#   FERRY_ACL                1 = `up` as with --acl. ACLs stay as the last `up` set
#                            them for the other commands; `up` switching them on or
#                            off takes the cluster down first
#   FERRY_COMPANION_CONFIG   HCL file with the companion's configuration (default:
#                            none, the shipped defaults); read by `up` and `companion`
# `up` writes these into the clients' configs (`restart-client K` applies them);
# `restart-client K --config` writes client K's.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$REPO/scripts/cluster
TEMPLATES=$LIB/templates

NOMAD_BIN=${FERRY_NOMAD_BIN:-/usr/local/bin/nomad}
CONSUL_BIN=${FERRY_CONSUL_BIN:-/usr/local/bin/consul}
REGISTRY_BIN=${FERRY_REGISTRY_BIN:-/usr/bin/docker-registry}
RUNC_BIN=${FERRY_RUNC_BIN:-/usr/local/bin/runc}
DRIVER_BIN=${FERRY_DRIVER_BIN:-$REPO/bin/nomad-driver-ferry}
COMPANION_BIN=${FERRY_COMPANION_BIN:-$REPO/bin/ferry-companion}
SKIP_DRIVER_CHECK=${FERRY_SKIP_DRIVER_CHECK:-0}
LOG_LEVEL=${FERRY_LOG_LEVEL:-INFO}
TIMEOUT=${FERRY_TIMEOUT:-120}

DATA=/var/lib/ferry-dev
# Runtime state (pids, the drivers' state_dir) on a tmpfs, as /run is on
# most hosts: the checkpoints of moves in flight are written there.
RUN=/run/ferry-dev
if [[ $(stat -f -c %T /run 2>/dev/null) != tmpfs ]]; then RUN=/dev/shm/ferry-dev; fi
LOGS=/var/log/ferry-dev
PIDS=$RUN/pids
ETC=$DATA/etc
TLS=$DATA/tls
PLUGINS=$DATA/plugins
CNI_PLUGINS=$DATA/cni
NETNS_DIR=/var/run/netns

HUB_NS=ferry-hub
BRIDGE=ferry0
NET=10.97.0
HUB_IP=$NET.1
# The drivers' transfer listener on each client's address.
TRANSFER_PORT=4701
DEFAULT_CLIENTS=2
MAX_CLIENTS=50

# Root-namespace loopback forwarders to the hub: the same port on both sides.
FORWARD_PORTS=(4646 8500 5000)
NOMAD_API=http://127.0.0.1:4646
CONSUL_API=http://127.0.0.1:8500
REGISTRY_PUSH=127.0.0.1:5000
REGISTRY=$HUB_IP:5000

FINGERPRINT_DENYLIST=env_aws,env_gce,env_azure,env_digitalocean

# shellcheck source=cluster/common.sh
source "$LIB/common.sh"
# shellcheck source=cluster/process.sh
source "$LIB/process.sh"
# shellcheck source=cluster/netns.sh
source "$LIB/netns.sh"
# shellcheck source=cluster/config.sh
source "$LIB/config.sh"
# shellcheck source=cluster/tls.sh
source "$LIB/tls.sh"
# shellcheck source=cluster/driver.sh
source "$LIB/driver.sh"
# shellcheck source=cluster/daemons.sh
source "$LIB/daemons.sh"
# shellcheck source=cluster/readiness.sh
source "$LIB/readiness.sh"
# shellcheck source=cluster/acl.sh
source "$LIB/acl.sh"
# shellcheck source=cluster/nodes.sh
source "$LIB/nodes.sh"
# shellcheck source=cluster/companion.sh
source "$LIB/companion.sh"
# shellcheck source=cluster/teardown.sh
source "$LIB/teardown.sh"
# shellcheck source=cluster/commands.sh
source "$LIB/commands.sh"

# usage: the commands, from the header above.
usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# main COMMAND ARGS...: run one command.
main() {
  local cmd=${1:-}
  (($#)) && shift
  # Every command but up works in the mode the last up set.
  if acl_configured; then acl_use 1; else acl_use 0; fi
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    restart-client) cmd_restart_client "$@" ;;
    kill-client) cmd_kill_client "$@" ;;
    crash-client) cmd_crash_client "$@" ;;
    companion) cmd_companion ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
