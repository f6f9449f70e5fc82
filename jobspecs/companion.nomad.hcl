# ferry-companion on every client: serves the node's checkpoints to the
# nodes that restore them (and removes each once its restore succeeded),
# measures the node's real load and publishes it in Consul, and, in the one
# agent that holds the planner's lock, moves offline work off hot nodes.
#
#   nomad job run -var token=SECRET jobspecs/companion.nomad.hcl
#   nomad job run -var token=SECRET -var "config=$(cat companion.hcl)" jobspecs/companion.nomad.hcl
#
# The token must equal the drivers' `companion { token = ... }`. The agent
# reads checkpoints from the driver's checkpoint directory, which the driver
# publishes as the node attribute driver.ferry.checkpoint_dir. The optional
# config is the companion's HCL configuration (see
# companion/config/example.hcl): thresholds, budgets, dry_run, sampling.
# Each agent talks to its own Nomad client at http://<node address>:4646.
variable "token" {
  type        = string
  description = "shared with the drivers' companion.token"
}

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
    # Keep trying: a node without its agent serves no checkpoints.
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

    task "agent" {
      driver = "raw_exec"

      config {
        command = var.binary
        args = [
          "agent",
          "-config", "${NOMAD_TASK_DIR}/companion.hcl",
          "-listen", "${NOMAD_IP_http}:4700",
          "-advertise", "${NOMAD_ADDR_http}",
          "-checkpoint-dir", "${attr.driver.ferry.checkpoint_dir}",
          "-node-id", "${node.unique.id}",
          "-node-name", "${node.unique.name}",
        ]
      }

      template {
        data        = "# ferry-companion configuration\n${var.config}\n"
        destination = "local/companion.hcl"
        # A changed configuration restarts the agent with it.
        change_mode = "restart"
      }

      env {
        FERRY_TOKEN           = var.token
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
