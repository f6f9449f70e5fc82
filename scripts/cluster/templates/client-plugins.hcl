plugin "nomad-driver-ferry" {
  config {
    data_dir            = "@data@/c@k@/ferry"
    state_dir           = "@run@/c@k@"
@checkpoint_dir_line@
@platform_line@
    insecure_registries = ["@registry@"]
    # Tasks may name OCI layouts under the dev cluster's layouts directory;
    # host binds and capabilities beyond Docker's defaults stay closed,
    # unless FERRY_OPEN_PERMISSIONS=1 opens them.
    oci_layout_dirs     = ["@data@/layouts"]
@permissions_lines@
    gc {
      image       = true
      image_delay = "2m"
@gc_lines@
    }
@images_block@
    # 127.0.0.1 in this namespace reaches neither this client's agent (it
    # binds @ip@) nor Consul, so the API clients' defaults would not do. The
    # driver asks its own agent which node it is.
    # With ACLs (up --acl), tokens made from jobspecs/acl/driver.*.hcl.
    nomad {
      address = "http://@ip@:4646"
@nomad_token_line@
    }
    consul {
      address = "@hub_ip@:8500"
@consul_token_line@
    }
    # Checkpoints move between the clients' drivers over mutual TLS, with
    # certificates from the cluster's CA (made by `nomad tls`).
    transfer {
      listen    = "@ip@:@transfer_port@"
      ca_file   = "@tls@/nomad-agent-ca.pem"
      cert_file = "@tls@/c@k@/global-client-nomad.pem"
      key_file  = "@tls@/c@k@/global-client-nomad-key.pem"
@transfer_lines@
    }
  }
}

# ferry-companion runs as a raw_exec system job (jobspecs/companion.nomad.hcl).
plugin "raw_exec" {
  config {
    enabled = true
  }
}
