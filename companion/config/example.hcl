# ferry-companion agent configuration: every field, at its default, and
# the capacity blocks, commented out as there are none by default.
#
#   ferry-companion agent -config /etc/ferry/companion.hcl
#
# Any field left out keeps its default. The environment overrides this file
# (NOMAD_ADDR_http, NOMAD_ADDR, NOMAD_TOKEN, CONSUL_HTTP_ADDR,
# CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE), and the flags given on the
# command line override both. Durations are strings such as "30s", "10m"
# or "1h30m".

# The host:port to serve /metrics and /v1/status on. They answer without a
# token, so by default only on this node's loopback; the system job serves
# them on the node's address, for Prometheus. Flag -listen.
listen = "127.0.0.1:4700"

# The host:port other nodes reach this agent at. Required; there is no
# default. The system job passes its "http" port, NOMAD_ADDR_http, which
# overrides this. Flag -advertise.
# advertise = "10.0.0.5:4700"

# This Nomad node's ID (${node.unique.id} in a jobspec) and name
# (${node.unique.name}). The ID is required. Flags -node-id and -node-name.
node_id   = "9c0e1a5e-3f4b-4d7a-8c2e-6b1f0d9e7a21"
node_name = ""

# The local Nomad agent, as an http:// or https:// URL.
# Environment NOMAD_ADDR, flag -nomad.
#
# With Nomad's ACLs on, token is the ACL token's secret ID (environment
# NOMAD_TOKEN, flag -nomad-token), or token_file a file holding it, read
# when no token is given anywhere (flag -nomad-token-file). The token needs
# the policy in jobspecs/acl/companion.nomad.hcl.
nomad {
  address    = "http://127.0.0.1:4646"
  token      = ""
  token_file = ""
}

# The local Consul agent, as host:port or an http:// or https:// URL.
# Environment CONSUL_HTTP_ADDR, flag -consul.
#
# With Consul's ACLs on, token is the ACL token's secret ID (environment
# CONSUL_HTTP_TOKEN, flag -consul-token), or token_file a file holding it,
# read when no token is given anywhere (environment CONSUL_HTTP_TOKEN_FILE,
# flag -consul-token-file). The token needs the policy in
# jobspecs/acl/companion.consul.hcl.
consul {
  address    = "127.0.0.1:8500"
  token      = ""
  token_file = ""
}

# How this node's load is measured and published.
sample {
  # How often the node is sampled. Flag -sample-interval.
  interval = "5s"

  # The samples of this last window are averaged; at least interval.
  # Flag -sample-window.
  window = "30s"

  # "allocations": the allocations' own usage, the only source that tells
  # online from offline work. "host": whole-host usage, of which all that is
  # not an offline allocation's counts as online. Flag -sample-source.
  source = "allocations"

  # Consul KV prefix under which each node publishes its load record.
  prefix = "ferry/nodes/"

  # The record is written when a usage (online, offline, or one
  # allocation's, CPU or memory, as a fraction of the node's capacity)
  # moved by at least dead_band since the last write, at once when the
  # allocations change, and at least every heartbeat, which also renews its
  # session (TTL two heartbeats: a dead agent's record goes 3 to 4
  # heartbeats after it died). Flag -sample-heartbeat.
  heartbeat = "1m0s"
  dead_band = 0.05
}

# The rebalancer: one agent at a time, holding lock_key, moves work off hot
# nodes.
rebalance {
  # Flag -rebalance=false turns it off.
  enabled = true

  # Decide and log every move, but make none. Flag -dry-run.
  dry_run = false

  # One planning round per interval. Flag -rebalance-interval.
  interval = "30s"

  # How long one move may take before it counts as failed.
  move_timeout = "10m"

  # Consul KV keys of the leader lock and of the planner's state. Neither
  # may be under sample.prefix.
  lock_key  = "ferry/leader"
  state_key = "ferry/planner/state"

  # Jobs at or above this priority are online, and so are all service jobs;
  # only offline work is moved. Nomad's default job priority is 50.
  online_priority = 70

  # Rounds in a row at or above a high threshold before a node is hot.
  consecutive = 3

  # An allocation that moved does not move again within this. "0" disables.
  cooldown = "30m"

  # Fractions of a node's capacity used by online work. A node is over when
  # either resource is at or above high, and cools once both are below low.
  threshold "cpu" {
    high = 0.8
    low  = 0.65
  }
  threshold "memory" {
    high = 0.85
    low  = 0.7
  }

  # How much moves at once; every limit is at least 1.
  limits {
    in_flight = 1  # moves in flight and planned, cluster-wide
    per_node  = 1  # from, and to, any one node
    per_job   = 1  # of any one job
    per_hour  = 30 # finished in the last hour, in flight and planned
    per_round = 1  # planned from one hot node in one round
  }
}

# Node pool sizing: one capacity block per Nomad node pool to size, labelled
# with the pool's name. No pool is sized unless it has a block, and there is
# none by default; uncommented, "default" below is a block at its defaults.
#
# Each round, the pool needs VT nodes: what Nomad cannot place plus what
# runs on the pool, packed onto the pool's node size, and at least min.
# While fewer than VT are in service (VA), nodes return to service, or new
# machines are created, up to max. Once more than VT have been in service
# for scale_in_idle, the surplus nodes leave service, down to min, idle ones
# first: each is made ineligible at once, but parked (or destroyed) only
# once the work on it has moved off live, and a node running work that
# cannot move is never parked.
#
# capacity "default" {
#   # Nodes always in service, and the most in service or starting.
#   min = 1
#   max = 10
#
#   # One sizing round per interval.
#   interval = "30s"
#
#   # How long the pool has more nodes in service than it needs before one
#   # leaves service; "0s" takes it out at once.
#   scale_in_idle = "2m"
#
#   # How nodes enter and leave service. "eligibility" parks a node (ready
#   # but ineligible) and brings it back: no machine is created or
#   # destroyed.
#   target "eligibility" {}
# }
#
# capacity "gpu" {
#   max = 4
#
#   # "command" creates and destroys machines with these commands, run
#   # without a shell. scale_out gets FERRY_POOL and FERRY_COUNT (machines
#   # to create) in its environment; scale_in gets FERRY_POOL, FERRY_NODE_ID
#   # and FERRY_NODE_NAME, of a node that runs nothing any more.
#   target "command" {
#     scale_out = ["/usr/local/bin/add-nodes", "gpu"]
#     scale_in  = ["/usr/local/bin/remove-node"]
#
#     # How long machines asked for count as starting (VB); after it, the
#     # pool is sized without them.
#     start_timeout = "10m"
#   }
# }
