# Nomad ACL policy of the ferry driver's token (the plugin's nomad.token),
# which the Ferry CNI plugin's configuration ("nomad": {"token"}) uses too:
#
#   nomad acl policy apply -description "nomad-driver-ferry" nomad-driver-ferry driver.nomad.hcl
#   nomad acl token create -name nomad-driver-ferry -policy nomad-driver-ferry

# Which node the driver runs on (/v1/agent/self).
agent {
  policy = "read"
}

# The node's address, and its transfer endpoint's.
node {
  policy = "read"
}

# Whether an allocation is migrating, its replacement and predecessor, and
# whether an allocation holding a network lease is gone.
namespace "*" {
  capabilities = ["read-job"]
}
