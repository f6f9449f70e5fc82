# Consul ACL policy of ferry-companion's token (consul.token):
#
#   consul acl policy create -name ferry-companion -rules @companion.consul.hcl
#   consul acl token create -description ferry-companion -policy-name ferry-companion
#
# Its records are under ferry/: the nodes' loads (ferry/nodes/), the
# planner's lock, state and pools (ferry/leader, ferry/planner/,
# ferry/capacity/), the moves (ferry/migrations/); it reads the drivers'
# checkpoint records (ferry/checkpoints/, ferry/drivers/) and sweeps the
# network leases of allocations gone (ferry/net/). A sample.prefix,
# lock_key or state_key moved elsewhere needs its own key_prefix rule.
key_prefix "ferry/" {
  policy = "write"
}

# Sessions hold the node records and the planner's lock; they are created
# on the node of the Consul agent the companion talks to.
session_prefix "" {
  policy = "write"
}
