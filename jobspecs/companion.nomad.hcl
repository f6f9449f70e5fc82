# ferry-companion on every client: measures the node's real load and
# publishes it in Consul, and, in the one agent that holds the planner's
# lock, plans and moves offline work off hot nodes. Each agent serves its
# /metrics and /v1/status, which answer without a token, on the listen
# address (by default the node's address, port 4700, for Prometheus).
# Checkpoints are not its business: the drivers serve them to each other.
#
#   nomad job run jobspecs/companion.nomad.hcl
#   nomad job run -var "config=$(cat companion.hcl)" jobspecs/companion.nomad.hcl
#
# The optional config is the companion's HCL configuration (see
# companion/config/example.hcl): thresholds, budgets, dry_run, sampling.
# Each agent talks to its own Nomad client at http://<node address>:4646.
#
# With ACLs on, put the agents' tokens (made from the policies in
# jobspecs/acl/) into the job's Nomad variable, which its tasks may read,
# and run the job with -var acl=true:
#
#   nomad var put nomad/jobs/ferry-companion nomad_token=<secret ID> consul_token=<secret ID>
#   nomad job run -var acl=true jobspecs/companion.nomad.hcl
variable "binary" {
  type        = string
  default     = "/usr/local/bin/ferry-companion"
  description = "path of ferry-companion on the clients"
}

variable "build" {
  type        = string
  default     = ""
  description = "identifies the binary; a new value restarts the agents"
}

variable "config" {
  type        = string
  default     = ""
  description = "the companion's HCL configuration; empty for the defaults"
}

variable "listen" {
  type        = string
  default     = "$${NOMAD_IP_http}:4700"
  description = "where each agent serves /metrics and /v1/status: the node's address, or \"127.0.0.1:4700\" to keep them on the node"
}

variable "acl" {
  type        = bool
  default     = false
  description = "read the agents' ACL tokens from the Nomad variable nomad/jobs/ferry-companion (nomad_token, consul_token)"
}

variable "consul" {
  type        = string
  default     = "127.0.0.1:8500"
  description = "Consul HTTP address as the clients reach it"
}

job "ferry-companion" {
  type        = "system"
  datacenters = ["*"]
  priority    = 90

  constraint {
    attribute = "${attr.driver.ferry.version}"
    operator  = "is_set"
  }

  group "agent" {
    # Keep trying: a node without its agent publishes no load, and so is
    # neither relieved when hot nor chosen as a destination.
    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    network {
      port "http" {
        static = 4700
      }
    }

    # Nomad's own service discovery finds every agent for Prometheus
    # (nomad_sd_configs); see the README's Dashboard section.
    service {
      name     = "ferry-companion"
      provider = "nomad"
      port     = "http"
    }

    task "agent" {
      driver = "raw_exec"

      config {
        command = var.binary
        args = concat([
          "agent",
          "-config", "${NOMAD_TASK_DIR}/companion.hcl",
          "-listen", var.listen,
          "-advertise", "${NOMAD_ADDR_http}",
          "-node-id", "${node.unique.id}",
          "-node-name", "${node.unique.name}",
          ], var.acl ? [
          "-nomad-token-file", "${NOMAD_SECRETS_DIR}/nomad.token",
          "-consul-token-file", "${NOMAD_SECRETS_DIR}/consul.token",
        ] : [])
      }

      # The tokens, from the job's variable into files only the task reads;
      # a new token restarts the agent with it.
      dynamic "template" {
        for_each = var.acl ? ["nomad", "consul"] : []
        content {
          data        = "{{ with nomadVar \"nomad/jobs/ferry-companion\" }}{{ .${template.value}_token }}{{ end }}"
          destination = "secrets/${template.value}.token"
          perms       = "0400"
          change_mode = "restart"
        }
      }

      template {
        data        = "# ferry-companion configuration\n${var.config}\n"
        destination = "local/companion.hcl"
        # A changed configuration restarts the agent with it.
        change_mode = "restart"
      }

      env {
        CONSUL_HTTP_ADDR      = var.consul
        NOMAD_ADDR            = "http://${NOMAD_IP_http}:4646"
        FERRY_COMPANION_BUILD = var.build
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
