# Nomad ACL policy of ferry-companion's token (nomad.token), the least it
# needs:
#
#   nomad acl policy apply -description "ferry-companion" ferry-companion companion.nomad.hcl
#   nomad acl token create -name ferry-companion -policy ferry-companion
#
# The agent checks it when it starts and names the rule it lacks.

# Read the allocations and jobs it measures and plans for (read-job), list
# the jobs whose work waits, for pool sizing (list-jobs), and stop the
# allocations it moves (alloc-lifecycle: alloc stop, which migrates), in
# every namespace whose work it may move.
namespace "*" {
  capabilities = ["list-jobs", "read-job", "alloc-lifecycle"]
}

# Read the nodes and their stats; write them: a move makes its source
# ineligible and marks its destination's meta (ferry_migrate_target), pool
# sizing parks and unparks nodes.
node {
  policy = "write"
}
