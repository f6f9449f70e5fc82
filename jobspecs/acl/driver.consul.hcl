# Consul ACL policy of the ferry driver's token (the plugin's consul.token),
# which the Ferry CNI plugin's configuration ("consul": {"token"}) uses too:
#
#   consul acl policy create -name nomad-driver-ferry -rules @driver.consul.hcl
#   consul acl token create -description nomad-driver-ferry -policy-name nomad-driver-ferry

# The checkpoint catalogue, the tasks' periodic checkpoints, the drivers'
# transfer endpoints, the Ferry network's address leases, and the log of
# the checkpoints each driver reaped.
key_prefix "ferry/checkpoints/" {
  policy = "write"
}
key_prefix "ferry/periodic/" {
  policy = "write"
}
key_prefix "ferry/drivers/" {
  policy = "write"
}
key_prefix "ferry/net/" {
  policy = "write"
}
key_prefix "ferry/reaped/" {
  policy = "write"
}

# Sessions hold the catalogue's and the endpoints' keys.
session_prefix "" {
  policy = "write"
}
