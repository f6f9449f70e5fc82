# ferry-companion on every client: serves the node's checkpoints to the
# nodes that restore them, and removes each once its restore succeeded.
#
#   nomad job run -var token=SECRET jobspecs/companion.nomad.hcl
#
# The token must equal the drivers' `companion { token = ... }`. The agent
# reads checkpoints from the driver's checkpoint directory, which the driver
# publishes as the node attribute driver.ferry.checkpoint_dir.
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
          "-listen", "${NOMAD_IP_http}:4700",
          "-advertise", "${NOMAD_ADDR_http}",
          "-checkpoint-dir", "${attr.driver.ferry.checkpoint_dir}",
          "-node-id", "${node.unique.id}",
          "-node-name", "${node.unique.name}",
        ]
      }

      env {
        FERRY_TOKEN           = var.token
        CONSUL_HTTP_ADDR      = var.consul
        FERRY_COMPANION_BUILD = var.build
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
